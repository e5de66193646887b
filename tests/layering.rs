//! The module layering of ARCHITECTURE.md, checked on the sources: every `crate::x`
//! a module names is of its own layer or a lower one, flags (`cli`) are read only
//! where they are resolved, and the modules form no cycle. A new module must be given
//! a layer here (and in ARCHITECTURE.md) before the suite passes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first. A module may use its own layer and the ones before it.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundations",
        &[
            "error",
            "cli",
            "conninfo",
            "signals",
            "signing",
            "schedule",
            "sqlscript",
            "httptls",
            "secrets",
            "logging",
            "progress",
        ],
    ),
    (
        "formats and places",
        &[
            "scope",
            "archive",
            "manifest",
            "record",
            "crypto",
            "compress",
            "storage",
            "database",
            "pgtool",
            "dump",
            "old_script",
            "metrics",
            "textfile",
            "notify",
        ],
    ),
    (
        "stages",
        &[
            "pipeline",
            "readback",
            "amcheck",
            "backup",
            "restore",
            "drill",
            "catalog",
            "gate",
            "clock",
            "retention",
            "debris",
            "lock",
            "report",
            "check",
        ],
    ),
    ("configuration", &["config"]),
    ("commands", &["commands"]),
];

/// Modules that may use `crate::cli` (the flag definitions): the ones that turn flags
/// into settings. Stages take settings, never flags.
const READ_FLAGS: &[&str] = &["cli", "config", "commands", "logging"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Top-level module → the `crate::` modules its code (not its tests) names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = repo().join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().to_string();
        if rel.starts_with("bin/") || rel == "main.rs" {
            continue;
        }
        let top = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let deps = graph.entry(top.clone()).or_default();
        for part in code.split("crate::").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() && name != top {
                deps.insert(name);
            }
        }
    }
    graph
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

/// The modules on a cycle, if any (depth-first search with a path stack).
fn a_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = path.iter().position(|p| p == d).unwrap();
                    let mut cycle = path[at..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                0 if graph.contains_key(d) => {
                    if let Some(c) = visit(d, graph, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn modules_form_no_cycle() {
    let graph = imports();
    assert!(graph.len() > 20, "the sources were read: {graph:?}");
    if let Some(c) = a_cycle(&graph) {
        panic!("module cycle: {}", c.join(" -> "));
    }
}

/// Every import that breaks the layering, one line each.
fn violations(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (m, deps) in graph {
        let Some(own) = layer_of(m) else {
            wrong.push(format!(
                "{m}: no layer (give it one in tests/layering.rs and ARCHITECTURE.md)"
            ));
            continue;
        };
        for d in deps {
            match layer_of(d) {
                Some(l) if l <= own => {}
                Some(l) => wrong.push(format!(
                    "{m} ({}) uses {d} ({})",
                    LAYERS[own].0, LAYERS[l].0
                )),
                None => wrong.push(format!("{m} uses {d}, which has no layer")),
            }
            if d == "cli" && !READ_FLAGS.contains(&m.as_str()) {
                wrong.push(format!(
                    "{m} reads flags (crate::cli); take settings from config"
                ));
            }
        }
    }
    wrong
}

#[test]
fn every_module_uses_only_its_own_layer_and_lower_ones() {
    let wrong = violations(&imports());
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn architecture_md_names_every_layer_and_module() {
    let text = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap();
    let section = text
        .split("## Layers")
        .nth(1)
        .expect("ARCHITECTURE.md has a '## Layers' section");
    let section = section.split("\n## ").next().unwrap();
    for (layer, modules) in LAYERS {
        assert!(section.contains(layer), "ARCHITECTURE.md layers: {layer}");
        for m in *modules {
            if repo().join(format!("src/{m}.rs")).exists()
                || repo().join(format!("src/{m}")).is_dir()
            {
                assert!(
                    section.contains(&format!("`{m}`")),
                    "ARCHITECTURE.md layers: `{m}`"
                );
            }
        }
    }
}

/// The checks themselves can fail: a planted cycle and a planted upward import are seen.
#[test]
fn the_checks_see_a_planted_cycle_and_an_upward_import() {
    let mut graph = imports();
    graph
        .get_mut("manifest")
        .unwrap()
        .insert("catalog".to_string());
    assert!(a_cycle(&graph).is_some(), "manifest -> catalog -> manifest");
    let wrong = violations(&graph);
    assert!(
        wrong
            .iter()
            .any(|w| w.starts_with("manifest (formats and places) uses catalog")),
        "{wrong:?}"
    );
    let mut graph = imports();
    graph.get_mut("pipeline").unwrap().insert("cli".to_string());
    assert!(
        violations(&graph)
            .iter()
            .any(|w| w.starts_with("pipeline reads flags")),
        "a stage reading flags is seen"
    );
}
