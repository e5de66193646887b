//! `leaflock-backup report` as a person looks at it: a bucket holding a week of real
//! backups (real runs of a growing database, re-dated one per day), real drills (two
//! pass, one fails), a manifest a stranger broke; the page rendered in headless
//! Chromium, which must load it without an error or a single network request, and
//! whose charts must hold one point per backup. A second bucket plants hostile text
//! (a table named `<script>…`, markup in a drill failure) that must stay text.
//!
//! `LEAFLOCK_REPORT_SCREENSHOT=PATH` also writes the screenshot there (the picture in
//! docs/monitoring.md is made that way).

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

fn s3_delete(key: &str) {
    rt().block_on(async {
        s3().delete_object()
            .bucket(testbed().bucket())
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("delete {key}: {e:?}"));
    })
}

fn iso(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Move the backup `run` just stored under `prefix` to the day `at`: object and
/// manifest (dates and key rewritten). `done` are the object keys already moved.
/// Returns the new object key.
fn redate_latest(prefix: &str, at: chrono::DateTime<chrono::Utc>, done: &[String]) -> String {
    let stamp = at.format("%Y%m%dT%H%M%SZ").to_string();
    let manifest_key = s3_keys(&format!("{prefix}/"))
        .into_iter()
        .find(|k| {
            k.ends_with(".manifest.json")
                && !done.contains(&k.replace(".manifest.json", ".dump.gz"))
        })
        .expect("the run wrote a manifest");
    let mut m: Value = serde_json::from_slice(&s3_get(&manifest_key)).unwrap();
    let old_object = m["object_key"].as_str().unwrap().to_string();
    // <root>YYYY/MM/DD/leaflock_backup_<stamp>_<run>.dump.gz: the date and the stamp
    // change, the database's root and the run id stay.
    let parts: Vec<&str> = old_object.rsplitn(5, '/').collect();
    let (file, root) = (parts[0], parts[4]);
    let rest = &file["leaflock_backup_".len() + stamp.len()..];
    let new_object = format!(
        "{root}/{}/leaflock_backup_{stamp}{rest}",
        at.format("%Y/%m/%d")
    );
    let duration = m["duration_seconds"].as_f64().unwrap();
    m["started_at"] = iso(at).into();
    m["finished_at"] = iso(at + chrono::Duration::milliseconds((duration * 1000.0) as i64)).into();
    m["object_key"] = new_object.clone().into();
    s3_put(&new_object, s3_get(&old_object));
    s3_put(
        &new_object.replace(".dump.gz", ".manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    );
    // The regression gate's record, if the run held this backup as suspect.
    let old_suspect = old_object.replace(".dump.gz", ".suspect.json");
    if s3_keys(&old_suspect).contains(&old_suspect) {
        let mut rec: Value = serde_json::from_slice(&s3_get(&old_suspect)).unwrap();
        rec["object_key"] = new_object.clone().into();
        s3_put(
            &new_object.replace(".dump.gz", ".suspect.json"),
            serde_json::to_vec_pretty(&rec).unwrap(),
        );
        s3_delete(&old_suspect);
    }
    s3_delete(&manifest_key);
    s3_delete(&old_object);
    new_object
}

/// The day whose backup the regression gate holds as suspect (the audit log falls
/// from 12 rows to 4: more than half, with `--suspect-min-rows 5`).
const SUSPECT_DAY: usize = 3;

fn grow(url: &str, day: usize) {
    psql(
        Pg::V15,
        url,
        "INSERT INTO notes (workspace_id, folder_id, created_by, title_encrypted, content_encrypted, content_hash) \
           SELECT workspace_id, folder_id, created_by, title_encrypted, \
                  gen_random_bytes(1024), content_hash \
             FROM notes ORDER BY random() LIMIT 60; \
         INSERT INTO audit_log (user_id, action, resource_type, details) \
           SELECT user_id, action, resource_type, details FROM audit_log LIMIT 120",
    );
    if day == SUSPECT_DAY {
        // Most of the audit log goes: the regression gate holds that day's backup.
        psql(
            Pg::V15,
            url,
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log ORDER BY created_at LIMIT 20)",
        );
    }
}

fn drill(prefix: &str, db: &str, key: &str, check: &str) -> RunResult {
    let mut cmd = s3_cmd("drill", prefix);
    cmd.arg(key)
        .env("LEAFLOCK_BACKUP_DATABASE_URL", Pg::V15.admin_url())
        .env("LEAFLOCK_BACKUP_DATABASE", db)
        .args(["--drill-check", check]);
    run(cmd)
}

struct Week {
    prefix: String,
    db: String,
    /// Oldest first.
    keys: Vec<String>,
    failed_drill: String,
    passed_drills: Vec<String>,
    suspect: String,
    bad_manifest: String,
    tables: usize,
}

/// Seven real backups of a growing database, one per day for the past week.
fn week_of_backups() -> Week {
    let db = unique("report");
    let source = TestDb::leaflock(Pg::V15, &db, 1);
    let url = source.url.clone();
    let prefix = unique("report");
    let today = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(2, 0, 0)
        .unwrap()
        .and_utc();
    let mut keys = Vec::new();
    for day in 0..7 {
        if day > 0 {
            grow(&url, day);
        }
        let mut cmd = s3_cmd("run", &prefix);
        cmd.env("LEAFLOCK_BACKUP_DATABASE_URL", &url)
            .args(["--suspect-min-rows", "5"]);
        let r = run(cmd);
        r.expect_code(0);
        assert_eq!(
            r.stderr.contains("suspect backup"),
            day == SUSPECT_DAY,
            "day {day}: {}",
            r.stderr
        );
        let at = today - chrono::Duration::days(7 - day as i64)
            + chrono::Duration::seconds(3 + day as i64 * 7);
        let key = redate_latest(&prefix, at, &keys);
        keys.push(key);
    }
    // Drills of stored backups: two pass, one fails a check.
    for k in [&keys[0], &keys[4]] {
        drill(&prefix, &db, k, "SELECT count(*) > 0 FROM notes").expect_code(0);
    }
    let failed = drill(&prefix, &db, &keys[5], "SELECT count(*) = 0 FROM users");
    failed.expect_code(1);
    // A manifest a stranger wrote, at a dated key of its own.
    let bad_manifest = format!(
        "{prefix}/{}/leaflock_backup_{}.manifest.json",
        today.format("%Y/%m/%d"),
        (today - chrono::Duration::hours(3)).format("%Y%m%dT%H%M%SZ")
    );
    s3_put(
        &bad_manifest,
        b"{\"format_version\": 1, \"tool\": \"leaflock-b".to_vec(),
    );
    let m: Value =
        serde_json::from_slice(&s3_get(&keys[6].replace(".dump.gz", ".manifest.json"))).unwrap();
    let tables = m["tables"].as_array().unwrap().len();
    Week {
        prefix,
        db,
        failed_drill: keys[5].clone(),
        passed_drills: vec![keys[0].clone(), keys[4].clone()],
        suspect: keys[SUSPECT_DAY].clone(),
        keys,
        bad_manifest,
        tables,
    }
}

/// Records every request that reaches it; answers none. Chromium is pointed at it for
/// every URL (loopback included), so a page that fetches anything is seen here.
struct Tripwire {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Tripwire {
    fn start() -> Tripwire {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut line = String::new();
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let _ = BufReader::new(&conn).read_line(&mut line);
                log.lock().unwrap().push(line.trim().to_string());
                let _ = (&conn).write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
            }
        });
        Tripwire { port, seen }
    }
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
    /// What it saw besides Chromium's own service calls, which it makes whatever the
    /// page (component updates, sign-in state, network time), background-networking
    /// flags or not.
    fn page_requests(&self) -> Vec<String> {
        const BROWSER_OWN: &[&str] = &[
            "update.googleapis.com",
            "accounts.google.com",
            "clients2.google.com",
        ];
        self.seen()
            .into_iter()
            .filter(|line| {
                let target = line.split(' ').nth(1).unwrap_or("");
                let host = target
                    .trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .split(['/', ':'])
                    .next()
                    .unwrap_or("");
                !BROWSER_OWN.contains(&host)
            })
            .collect()
    }
}

/// Headless Chromium, as on this kind of machine: no sandbox (root), no GPU, no
/// background networking, a fresh profile, every request through `trip`.
fn chromium(trip: &Tripwire, args: &[&str], page: &Path) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            // Console messages (a CSP violation, a script error) go to stderr.
            "--enable-logging=stderr",
            "--log-level=0",
            "--v=0",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--proxy-server=http://127.0.0.1:{}", trip.port))
        .arg("--proxy-bypass-list=<-loopback>")
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .expect("chromium runs (scripts/testbed.sh install installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "chromium failed: {stderr}");
    (stdout, stderr)
}

/// What the page said to the console, and every resource it could not load.
fn page_errors(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Content Security Policy"))
        .map(str::to_string)
        .collect()
}

/// (chart name, table, number of points) of every SVG chart in a DOM dump.
fn charts(dom: &str) -> Vec<(String, Option<String>, usize)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(tag[start..].split('"').next()?.to_string())
    };
    dom.split("<svg")
        .skip(1)
        .map(|chunk| {
            let tag = chunk.split('>').next().unwrap();
            let body = chunk.split("</svg>").next().unwrap();
            (
                attr(tag, "data-chart").unwrap_or_default(),
                attr(tag, "data-table"),
                body.matches("<circle").count(),
            )
        })
        .collect()
}

fn png_size(data: &[u8]) -> (u32, u32) {
    assert_eq!(&data[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |i: usize| u32::from_be_bytes(data[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

fn report(prefix: &str, db: &str, extra: &[&str]) -> RunResult {
    let mut cmd = s3_cmd("report", prefix);
    cmd.args(["--database", db]).args(extra);
    run(cmd)
}

#[test]
fn a_week_of_backups_renders_in_chromium_with_every_point_and_no_request() {
    let week = week_of_backups();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let r = report(
        &week.prefix,
        &week.db,
        &[
            "--out",
            page.to_str().unwrap(),
            "--keep-last",
            "3",
            "--keep-daily",
            "5",
        ],
    );
    r.expect_code(0);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("default-src 'none'"), "no CSP");
    assert!(!html.contains("<script"), "the report carries a script");
    // Nothing that loads: no source, link, import or CSS url (the destination's
    // endpoint URL is in the text, which loads nothing).
    for loads in [" src=", " href=", "<link", "@import", "url(", "srcset"] {
        assert!(!html.contains(loads), "the page loads something: {loads}");
    }

    // The data, as --json gives it.
    let j = report(
        &week.prefix,
        &week.db,
        &["--json", "--keep-last", "3", "--keep-daily", "5"],
    );
    j.expect_code(0);
    let data: Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(data["database"], week.db.as_str());
    let backups = data["backups"].as_array().unwrap();
    let keys: Vec<&str> = backups.iter().map(|b| b["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        week.keys.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let sizes: Vec<u64> = backups
        .iter()
        .map(|b| b["stored_bytes"].as_u64().unwrap())
        .collect();
    assert!(sizes[6] > sizes[0], "the database grew: {sizes:?}");
    let outcome = |k: &str| {
        backups.iter().find(|b| b["key"] == k).unwrap()["drill"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(outcome(&week.failed_drill), "failed");
    for k in &week.passed_drills {
        assert_eq!(outcome(k), "counts_only");
    }
    assert_eq!(data["drills"]["failed"], 1);
    assert_eq!(data["drills"]["counts_only"], 2);
    assert_eq!(data["drills"]["never"], 4);
    let failed = backups
        .iter()
        .find(|b| b["key"] == week.failed_drill.as_str())
        .unwrap();
    assert_eq!(failed["highlights"][0]["label"], "drill_failed");
    assert!(failed["highlights"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("SELECT count(*) = 0 FROM users"));
    let anomalies = data["anomalies"].as_array().unwrap();
    assert!(
        anomalies
            .iter()
            .any(|a| a["key"] == week.bad_manifest.as_str()
                && a["highlights"][0]["label"] == "bad_manifest"),
        "{anomalies:?}"
    );
    // Retention: the last three and five daily are kept, the two oldest go (the
    // newest passing drill is within the five).
    let plan = &data["retention"];
    assert_eq!(plan["policy"], "--keep-last 3, --keep-daily 5");
    let decided: Vec<(String, bool)> = plan["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["key"].as_str().unwrap().to_string(),
                d["keep"].as_bool().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, bool)> = week
        .keys
        .iter()
        .rev()
        .enumerate()
        .map(|(i, k)| (k.clone(), i < 5))
        .collect();
    assert_eq!(decided, expected);
    // The regression gate's suspect, named with its finding.
    let suspect = backups
        .iter()
        .find(|b| b["key"] == week.suspect.as_str())
        .unwrap();
    assert_eq!(suspect["highlights"][0]["label"], "suspect", "{suspect}");
    assert!(
        suspect["highlights"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("audit_log"),
        "{suspect}"
    );
    let reasons = &plan["decisions"][6 - SUSPECT_DAY]["reasons"];
    assert!(
        reasons
            .to_string()
            .contains("suspect, awaiting an operator"),
        "{reasons}"
    );
    let tables = data["tables"].as_array().unwrap();
    assert_eq!(tables.len(), week.tables);

    // What a person sees: Chromium loads it without a console message, a refused
    // resource or a request, and every chart holds one point per backup.
    let trip = Tripwire::start();
    let shot = dir.path().join("report.png");
    let (_, stderr) = chromium(
        &trip,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1100,1900",
        ],
        &page,
    );
    assert_eq!(page_errors(&stderr), Vec::<String>::new(), "{stderr}");
    let png = std::fs::read(&shot).expect("a screenshot");
    assert_eq!(png_size(&png), (1100, 1900));
    assert!(
        png.len() > 40_000,
        "an empty-looking screenshot: {} bytes",
        png.len()
    );
    if let Ok(to) = std::env::var("LEAFLOCK_REPORT_SCREENSHOT") {
        let to = PathBuf::from(to);
        if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::copy(&shot, &to).unwrap();
    }

    let (dom, stderr) = chromium(&trip, &["--dump-dom"], &page);
    assert_eq!(page_errors(&stderr), Vec::<String>::new(), "{stderr}");
    assert!(dom.contains(&format!("Backups of {}", week.db)), "{dom}");
    let charts = charts(&dom);
    let count = |name: &str| charts.iter().filter(|c| c.0 == name).collect::<Vec<_>>();
    assert_eq!(count("size").len(), 1);
    assert_eq!(
        count("size")[0].2,
        2 * 7,
        "stored and uncompressed, per backup"
    );
    assert_eq!(count("duration")[0].2, 7);
    assert_eq!(count("drills")[0].2, 7);
    let rows = count("rows");
    assert_eq!(rows.len(), week.tables, "one chart per table");
    for (_, table, points) in rows {
        assert_eq!(*points, 7, "{table:?}");
    }
    // Flagged: the failed drill's points (size, uncompressed, duration, drill strip).
    assert_eq!(
        dom.matches(" flag\"").count(),
        4 + 3,
        "ringed: the failed drill's size, uncompressed, duration and drill points, the suspect's size, uncompressed and duration"
    );
    assert!(
        dom.contains("bad manifest"),
        "the stranger's manifest is listed"
    );
    assert_eq!(
        trip.page_requests(),
        Vec::<String>::new(),
        "the page made requests"
    );

    // The tripwire does see a page that fetches something (so silence above means it).
    let control = dir.path().join("control.html");
    std::fs::write(
        &control,
        "<!doctype html><img src=\"http://leaflock-report-canary.invalid/x.png\">",
    )
    .unwrap();
    chromium(&trip, &["--dump-dom"], &control);
    assert!(
        trip.page_requests()
            .iter()
            .any(|l| l.contains("leaflock-report-canary.invalid")),
        "{:?}",
        trip.seen()
    );
    // And the console check sees a page that breaks its own policy.
    let csp = dir.path().join("csp.html");
    std::fs::write(
        &csp,
        "<!doctype html><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'\">\
         <img src=\"http://leaflock-report-canary.invalid/y.png\">",
    )
    .unwrap();
    let (_, stderr) = chromium(&trip, &["--dump-dom"], &csp);
    assert!(!page_errors(&stderr).is_empty(), "{stderr}");
}

#[test]
fn what_the_bucket_says_stays_text() {
    // One real backup, its manifest and drill record then rewritten by a stranger.
    let db = unique("hostile");
    let source = TestDb::leaflock(Pg::V15, &db, 1);
    let url = source.url.clone();
    let prefix = unique("hostile");
    let mut cmd = s3_cmd("run", &prefix);
    cmd.env("LEAFLOCK_BACKUP_DATABASE_URL", &url);
    run(cmd).expect_code(0);
    source.drop_now();
    let mkey = keys_ending(&prefix, ".manifest.json")
        .into_iter()
        .next()
        .unwrap();
    let mut m: Value = serde_json::from_slice(&s3_get(&mkey)).unwrap();
    let evil_table =
        "<script>document.title='owned'</script><img src=\"http://127.0.0.1:1/t.png\">";
    m["tables"].as_array_mut().unwrap().push(serde_json::json!({
        "schema": "public\"><b>", "name": evil_table, "rows": 1
    }));
    m["compression"]["algorithm"] = "<iframe src=\"http://127.0.0.1:1/\"></iframe>".into();
    s3_put(&mkey, serde_json::to_vec(&m).unwrap());
    let object_key = m["object_key"].as_str().unwrap().to_string();
    let rec = serde_json::json!({
        "format_version": 1, "run_id": "r", "object_key": object_key,
        "started_at": m["started_at"], "finished_at": m["finished_at"], "duration_seconds": 1.0,
        "passed": false, "failures": ["<img src=x onerror=\"document.title='owned'\">"],
        "server": "s", "scratch_database": "d", "scratch_database_kept": false,
        "pg_restore_version": "v", "tables_checked": 1, "rows_checked": 1, "checks_run": 0
    });
    s3_put(
        &object_key.replace(".dump.gz", ".drill.json"),
        serde_json::to_vec(&rec).unwrap(),
    );
    // A key with markup in it: debris the report lists.
    s3_put(
        &format!("{prefix}/<svg onload=alert(1)>.bin"),
        b"x".to_vec(),
    );

    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    report(&prefix, &db, &["--out", page.to_str().unwrap()]).expect_code(0);
    let html = std::fs::read_to_string(&page).unwrap();
    for raw in ["<script", "<img", "<iframe", "<b>", "<svg onload"] {
        assert!(!html.contains(raw), "{raw} reached the page unescaped");
    }
    assert!(
        html.contains("&lt;script&gt;document.title="),
        "the table name is shown as text"
    );
    assert!(
        html.contains("&lt;svg onload=alert(1)&gt;"),
        "the key is shown as text"
    );

    let trip = Tripwire::start();
    let (dom, stderr) = chromium(&trip, &["--dump-dom"], &page);
    assert_eq!(page_errors(&stderr), Vec::<String>::new(), "{stderr}");
    assert!(
        dom.contains(&format!("<title>Backups of {db}</title>")),
        "the title was changed"
    );
    for element in ["<script", "<img", "<iframe", "<b>"] {
        assert!(!dom.contains(element), "{element} became an element");
    }
    assert!(
        dom.contains("&lt;img src=x onerror=\"document.title='owned'\"&gt;"),
        "the failure text is shown as text"
    );
    assert_eq!(
        trip.page_requests(),
        Vec::<String>::new(),
        "the page made requests"
    );
}

#[test]
fn bad_report_options_exit_2_naming_them() {
    let prefix = unique("report_usage");
    let r = report(&prefix, "notes", &["--out", "/nonexistent-dir/r.html"]);
    r.expect_code(2);
    assert!(
        r.stderr.contains("--out / LEAFLOCK_BACKUP_REPORT_OUT"),
        "{}",
        r.stderr
    );
    let r = report(&prefix, &"x".repeat(64), &[]);
    r.expect_code(2);
    assert!(
        r.stderr.contains("--database / LEAFLOCK_BACKUP_DATABASE"),
        "{}",
        r.stderr
    );
    // Nothing under the prefix: exit 1, saying so, and no file.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.html");
    let r = report(&prefix, "notes", &["--out", out.to_str().unwrap()]);
    r.expect_code(1);
    assert!(
        r.stderr.contains("no backup with a manifest"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}
