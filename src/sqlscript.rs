//! A plain-format pg_dump script, read as untrusted input: a lexer that splits it into
//! statements, psql backslash lines and `COPY … FROM stdin` data the way PostgreSQL's
//! own scanner sees the text (string literals, escape strings, quoted identifiers,
//! dollar quotes, nested comments), and the policy that decides what of it may run
//! over the tool's own connection.
//!
//! Nothing here executes anything. [`Splitter`] is fed one line at a time and hands
//! back complete [`Item`]s; [`judge`] says of each statement whether it is part of the
//! target database's own objects ([`Verdict::Run`]), a database-level statement of the
//! old script's `pg_dump --clean --if-exists --create` that the named target replaces
//! ([`Verdict::Skip`]), or something that reaches outside the target ([`Verdict::Refuse`]
//! with the reason). The policy is an allowlist of what pg_dump writes, plus a denylist
//! of what reaches outside the database (other databases, roles, `ALTER SYSTEM`,
//! tablespaces, `COPY … PROGRAM`, server files, untrusted languages, foreign servers),
//! also looked for inside function bodies and string literals.

/// One piece of the script, with the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A SQL statement, with its terminating `;`.
    Statement { line: u64, text: String },
    /// A psql backslash command line (`\connect notes`, `\restrict KEY`, `\! id`).
    Meta { line: u64, text: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    /// In `'…'`; `backslash` for `E'…'` strings, where `\'` does not end it.
    Quote {
        backslash: bool,
    },
    /// In `"…"`.
    Ident,
    /// In `/* … */`, at this nesting depth.
    Comment(u32),
}

/// Splits a script into [`Item`]s, one line at a time, keeping the scanner's state
/// across lines.
pub struct Splitter {
    state: State,
    /// The open dollar quote's tag (with its `$`s), if in one.
    dollar: Option<String>,
    buf: String,
    start_line: u64,
    parens: i64,
    /// Whether `buf` holds anything but whitespace and comments.
    begun: bool,
    /// The longest statement accepted, in bytes.
    pub max_statement: usize,
}

/// Why the splitter cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub line: u64,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// A dollar-quote tag starting at `s` (`$$`, `$body$`), if there is one.
fn dollar_tag(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('$')?;
    let end = rest.find('$')?;
    let tag = &rest[..end];
    let ok = tag.is_empty()
        || (!tag.starts_with(|c: char| c.is_ascii_digit())
            && tag.chars().all(|c| c.is_alphanumeric() || c == '_'));
    ok.then(|| &s[..end + 2])
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter::new()
    }
}

impl Splitter {
    pub fn new() -> Splitter {
        Splitter {
            state: State::Normal,
            dollar: None,
            buf: String::new(),
            start_line: 0,
            parens: 0,
            begun: false,
            max_statement: 64 << 20,
        }
    }

    /// Whether the splitter is between statements (nothing open).
    pub fn idle(&self) -> bool {
        !self.begun && self.state == State::Normal && self.dollar.is_none()
    }

    /// Feed one line (with its `\n`, if it had one). Returns the items it completed.
    pub fn line(&mut self, line_no: u64, line: &str) -> Result<Vec<Item>, Refusal> {
        let mut out = Vec::new();
        if self.idle() {
            let t = line.trim_start();
            if t.starts_with('\\') {
                out.push(Item::Meta {
                    line: line_no,
                    text: t.trim_end().to_string(),
                });
                return Ok(out);
            }
        }
        let refuse = |reason: String| Refusal {
            line: line_no,
            reason,
        };
        let mut i = 0;
        let b = line.as_bytes();
        while i < line.len() {
            let rest = &line[i..];
            let c = rest.chars().next().expect("not at the end");
            let n = c.len_utf8();
            if let Some(tag) = &self.dollar {
                if rest.starts_with(tag.as_str()) {
                    let l = tag.len();
                    self.buf.push_str(&rest[..l]);
                    self.dollar = None;
                    i += l;
                } else {
                    self.buf.push(c);
                    i += n;
                }
                continue;
            }
            match self.state {
                State::Quote { backslash } => {
                    self.buf.push(c);
                    i += n;
                    if backslash && c == '\\' {
                        if let Some(next) = line[i..].chars().next() {
                            self.buf.push(next);
                            i += next.len_utf8();
                        }
                    } else if c == '\'' {
                        if line[i..].starts_with('\'') {
                            self.buf.push('\'');
                            i += 1;
                        } else {
                            self.state = State::Normal;
                        }
                    }
                }
                State::Ident => {
                    self.buf.push(c);
                    i += n;
                    if c == '"' {
                        if line[i..].starts_with('"') {
                            self.buf.push('"');
                            i += 1;
                        } else {
                            self.state = State::Normal;
                        }
                    }
                }
                State::Comment(depth) => {
                    if rest.starts_with("*/") {
                        self.buf.push_str("*/");
                        i += 2;
                        self.state = if depth == 1 {
                            State::Normal
                        } else {
                            State::Comment(depth - 1)
                        };
                    } else if rest.starts_with("/*") {
                        self.buf.push_str("/*");
                        i += 2;
                        self.state = State::Comment(depth + 1);
                    } else {
                        self.buf.push(c);
                        i += n;
                    }
                }
                State::Normal => {
                    if rest.starts_with("--") {
                        // A line comment: to the end of the line, kept for nothing.
                        let end = rest.find('\n').map(|p| i + p).unwrap_or(line.len());
                        self.buf.push(' ');
                        i = end;
                        continue;
                    }
                    if rest.starts_with("/*") {
                        self.buf.push_str("/*");
                        i += 2;
                        self.state = State::Comment(1);
                        continue;
                    }
                    if c.is_whitespace() {
                        self.buf.push(c);
                        i += n;
                        continue;
                    }
                    if !self.begun {
                        self.begun = true;
                        self.start_line = line_no;
                    }
                    let prev_ident = i > 0
                        && line[..i]
                            .chars()
                            .next_back()
                            .is_some_and(|p| ident_char(p) || p == '"');
                    match c {
                        '\'' => {
                            // E'…' (and e'…'): backslash escapes; U&'…', B'…', X'…'
                            // and N'…' are standard strings.
                            let e = i > 0
                                && matches!(b[i - 1], b'e' | b'E')
                                && (i < 2
                                    || !ident_char(
                                        line[..i - 1].chars().next_back().unwrap_or(' '),
                                    ));
                            self.state = State::Quote { backslash: e };
                            self.buf.push(c);
                            i += 1;
                        }
                        '"' => {
                            self.state = State::Ident;
                            self.buf.push(c);
                            i += 1;
                        }
                        '$' if !prev_ident => match dollar_tag(rest) {
                            Some(tag) => {
                                self.buf.push_str(tag);
                                self.dollar = Some(tag.to_string());
                                i += tag.len();
                            }
                            None => {
                                self.buf.push(c);
                                i += 1;
                            }
                        },
                        '\\' => {
                            return Err(refuse(
                                "a psql backslash command inside a statement (psql would run it; \
                                 this restore runs SQL only)"
                                    .into(),
                            ))
                        }
                        '(' => {
                            self.parens += 1;
                            self.buf.push(c);
                            i += 1;
                        }
                        ')' => {
                            self.parens -= 1;
                            self.buf.push(c);
                            i += 1;
                        }
                        ';' if self.parens <= 0 => {
                            self.buf.push(';');
                            i += 1;
                            out.push(Item::Statement {
                                line: self.start_line,
                                text: std::mem::take(&mut self.buf).trim().to_string(),
                            });
                            self.begun = false;
                            self.parens = 0;
                            // A backslash command may follow on the same line.
                            let after = line[i..].trim_start();
                            if after.starts_with('\\') {
                                return Err(refuse(format!(
                                    "a psql backslash command after a statement: {}",
                                    clip(after.trim_end())
                                )));
                            }
                        }
                        _ => {
                            self.buf.push(c);
                            i += n;
                        }
                    }
                }
            }
            if self.buf.len() > self.max_statement {
                return Err(Refusal {
                    line: self.start_line.max(1),
                    reason: format!(
                        "a statement longer than {} MiB (not something pg_dump writes)",
                        self.max_statement >> 20
                    ),
                });
            }
        }
        if !self.begun && self.state == State::Normal && self.dollar.is_none() {
            self.buf.clear();
        }
        Ok(out)
    }

    /// At the end of the script: anything left open is a truncated or crafted script.
    pub fn finish(&self, last_line: u64) -> Result<(), Refusal> {
        if self.idle() {
            return Ok(());
        }
        let what = if self.dollar.is_some() {
            "a dollar-quoted string"
        } else {
            match self.state {
                State::Quote { .. } => "a string literal",
                State::Ident => "a quoted identifier",
                State::Comment(_) => "a comment",
                State::Normal => "a statement without its closing `;`",
            }
        };
        Err(Refusal {
            line: if self.begun {
                self.start_line
            } else {
                last_line
            },
            reason: format!("the script ends inside {what}"),
        })
    }
}

/// A short, single-line excerpt for messages.
pub fn clip(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 80 {
        format!("{}…", one.chars().take(80).collect::<String>())
    } else {
        one
    }
}

/// A token of a complete statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A keyword or unquoted identifier, upper-cased.
    Word(String),
    /// A `"quoted"` identifier, unquoted.
    Ident(String),
    /// A string literal's contents.
    Str(String),
    /// A dollar-quoted string's contents.
    Dollar(String),
    /// Any other character (operators, punctuation, digits).
    Punct(char),
}

/// The tokens of one complete statement (comments dropped).
pub fn tokens(s: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && cs.get(i + 1) == Some(&'-') {
            while i < cs.len() && cs[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && cs.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < cs.len() {
                if cs[i] == '/' && cs.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if cs[i] == '*' && cs.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '\'' {
            let backslash = i > 0
                && matches!(cs[i - 1], 'e' | 'E')
                && (i < 2 || !(ident_char(cs[i - 2]) || cs[i - 2] == '"'))
                && matches!(out.last(), Some(Token::Word(w)) if w == "E");
            if backslash {
                out.pop();
            }
            let mut v = String::new();
            i += 1;
            while i < cs.len() {
                if backslash && cs[i] == '\\' && i + 1 < cs.len() {
                    v.push(cs[i]);
                    v.push(cs[i + 1]);
                    i += 2;
                } else if cs[i] == '\'' {
                    if cs.get(i + 1) == Some(&'\'') {
                        v.push('\'');
                        i += 2;
                    } else {
                        i += 1;
                        break;
                    }
                } else {
                    v.push(cs[i]);
                    i += 1;
                }
            }
            out.push(Token::Str(v));
        } else if c == '"' {
            let mut v = String::new();
            i += 1;
            while i < cs.len() {
                if cs[i] == '"' {
                    if cs.get(i + 1) == Some(&'"') {
                        v.push('"');
                        i += 2;
                    } else {
                        i += 1;
                        break;
                    }
                } else {
                    v.push(cs[i]);
                    i += 1;
                }
            }
            out.push(Token::Ident(v));
        } else if c == '$' {
            let rest: String = cs[i..].iter().collect();
            match dollar_tag(&rest) {
                Some(tag) => {
                    let tag = tag.to_string();
                    let body_start = i + tag.chars().count();
                    let body: String = cs[body_start..].iter().collect();
                    let (content, used) = match body.find(&tag) {
                        Some(p) => (
                            body[..p].to_string(),
                            body[..p].chars().count() + tag.chars().count(),
                        ),
                        None => (body.clone(), body.chars().count()),
                    };
                    out.push(Token::Dollar(content));
                    i = body_start + used;
                }
                None => {
                    out.push(Token::Punct('$'));
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() {
            while i < cs.len() && (ident_char(cs[i]) || cs[i] == '.') {
                i += 1;
            }
            out.push(Token::Punct('0'));
        } else if c.is_alphabetic() || c == '_' {
            let mut w = String::new();
            while i < cs.len() && ident_char(cs[i]) {
                w.push(cs[i]);
                i += 1;
            }
            out.push(Token::Word(w.to_uppercase()));
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

/// What to do with one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Execute it on the target.
    Run,
    /// Execute it, then stream the data lines that follow into it (`COPY … FROM stdin`).
    CopyIn,
    /// Leave it out: the named target stands in for it.
    Skip(&'static str),
    /// Stop the restore: it reaches outside the target database.
    Refuse(String),
}

/// What the script said about its own database so far.
#[derive(Debug, Default)]
pub struct Context {
    /// The database the script's `DROP/CREATE DATABASE` name (its own).
    pub own_database: Option<String>,
}

/// Functions that read or write the server's files, reach other databases or servers,
/// or act on other sessions: never part of a database's own objects.
const FORBIDDEN_FUNCTIONS: &[&str] = &[
    "PG_READ_FILE",
    "PG_READ_BINARY_FILE",
    "PG_LS_DIR",
    "PG_STAT_FILE",
    "PG_LS_LOGDIR",
    "PG_LS_WALDIR",
    "PG_LS_TMPDIR",
    "PG_LS_ARCHIVE_STATUSDIR",
    "PG_LS_LOGICALSNAPDIR",
    "PG_LS_LOGICALMAPDIR",
    "PG_LS_REPLSLOTDIR",
    "LO_IMPORT",
    "LO_EXPORT",
    "PG_FILE_WRITE",
    "PG_FILE_RENAME",
    "PG_FILE_UNLINK",
    "PG_FILE_SYNC",
    "PG_LOGDIR_LS",
    "DBLINK",
    "DBLINK_EXEC",
    "DBLINK_CONNECT",
    "DBLINK_CONNECT_U",
    "DBLINK_SEND_QUERY",
    "PG_TERMINATE_BACKEND",
    "PG_CANCEL_BACKEND",
    "PG_SIGNAL_BACKEND",
    "PG_RELOAD_CONF",
    "PG_ROTATE_LOGFILE",
    "PG_PROMOTE",
    "PG_SWITCH_WAL",
    "PG_CREATE_RESTORE_POINT",
    "PG_CREATE_PHYSICAL_REPLICATION_SLOT",
    "PG_CREATE_LOGICAL_REPLICATION_SLOT",
    "PG_DROP_REPLICATION_SLOT",
    "PG_LOGICAL_EMIT_MESSAGE",
];

/// Languages whose functions run with the server's own rights on the host, and
/// extensions that reach the server's files or other servers.
const UNTRUSTED_LANGUAGES: &[&str] = &[
    "C",
    "INTERNAL",
    "PLPYTHONU",
    "PLPYTHON2U",
    "PLPYTHON3U",
    "PLPERLU",
    "PLTCLU",
    "PLSH",
    "PLRUST",
    "PLV8U",
    "PLLUAU",
];
const UNSAFE_EXTENSIONS: &[&str] = &[
    "ADMINPACK",
    "FILE_FDW",
    "DBLINK",
    "POSTGRES_FDW",
    "PLPYTHONU",
    "PLPYTHON2U",
    "PLPYTHON3U",
    "PLPERLU",
    "PLTCLU",
    "PLSH",
    "LO",
];

/// Session settings the script may not change: they would change how the rest of it
/// is read (standard_conforming_strings), who runs it, or bytes on the wire.
const FIXED_SETTINGS: &[&str] = &[
    "ROLE",
    "SESSION",
    "SESSION_AUTHORIZATION",
    "SESSION_REPLICATION_ROLE",
    "STANDARD_CONFORMING_STRINGS",
    "CLIENT_ENCODING",
    "NAMES",
    "LOCAL",
    "TRANSACTION",
    "DEFAULT_TRANSACTION_READ_ONLY",
    "TRANSACTION_READ_ONLY",
    "LOCAL_PRELOAD_LIBRARIES",
    "SESSION_PRELOAD_LIBRARIES",
    "DYNAMIC_LIBRARY_PATH",
];

fn name_of(t: Option<&Token>) -> Option<String> {
    match t? {
        Token::Word(w) => Some(w.to_lowercase()),
        Token::Ident(s) => Some(s.clone()),
        _ => None,
    }
}

fn word(t: Option<&Token>) -> &str {
    match t {
        Some(Token::Word(w)) => w.as_str(),
        _ => "",
    }
}

/// Forbidden things anywhere in the statement: the function names above as words (and
/// inside string literals, which dynamic SQL executes), `COPY … PROGRAM` and COPY to
/// or from a server file inside function bodies, untrusted languages.
fn scan(toks: &[Token], depth: u32) -> Option<String> {
    for (i, t) in toks.iter().enumerate() {
        match t {
            Token::Word(w) => {
                if FORBIDDEN_FUNCTIONS.contains(&w.as_str()) {
                    return Some(format!(
                        "{} reaches the server's files, other databases or other sessions",
                        w.to_lowercase()
                    ));
                }
                if w == "PROGRAM"
                    && matches!(
                        word(i.checked_sub(1).and_then(|p| toks.get(p))),
                        "TO" | "FROM"
                    )
                {
                    return Some("COPY … PROGRAM runs a command on the database server".into());
                }
                if w == "LANGUAGE" {
                    let lang = name_of(toks.get(i + 1)).unwrap_or_default().to_uppercase();
                    if UNTRUSTED_LANGUAGES.contains(&lang.as_str()) {
                        return Some(format!(
                            "a function in the untrusted language {} runs code on the database server",
                            lang.to_lowercase()
                        ));
                    }
                }
                if w == "COPY" && depth > 0 {
                    if let Some(r) = copy_target(&toks[i + 1..]) {
                        return Some(r);
                    }
                }
                // Inside a function body, EXECUTE runs SQL text made at run time: only a
                // single literal can be checked (and is, as code); anything built
                // (`'CO' || 'PY …'`, format(), a variable) cannot be, so it is refused.
                if w == "EXECUTE" && depth > 0 {
                    match (toks.get(i + 1), toks.get(i + 2)) {
                        (Some(Token::Str(s) | Token::Dollar(s)), next)
                            if matches!(next, None | Some(Token::Punct(';')))
                                || matches!(next, Some(Token::Word(x)) if x == "USING" || x == "INTO") =>
                        {
                            if depth < 4 {
                                if let Some(r) = scan(&tokens(s), depth + 1) {
                                    return Some(r);
                                }
                            }
                        }
                        _ => {
                            return Some(
                                "a function body EXECUTEs SQL built at run time, which cannot be \
                                 checked before it runs"
                                    .into(),
                            )
                        }
                    }
                }
                if w == "SYSTEM" && word(i.checked_sub(1).and_then(|p| toks.get(p))) == "ALTER" {
                    return Some("ALTER SYSTEM changes the server's configuration".into());
                }
            }
            Token::Str(s) | Token::Ident(s) => {
                let up = s.to_uppercase();
                if let Some(f) = FORBIDDEN_FUNCTIONS.iter().find(|f| {
                    up.match_indices(*f).any(|(p, _)| {
                        let before = up[..p].chars().next_back();
                        let after = up[p + f.len()..].chars().next();
                        !before.is_some_and(ident_char) && !after.is_some_and(ident_char)
                    })
                }) {
                    if matches!(t, Token::Str(_)) {
                        return Some(format!(
                            "a string literal names {}, which reaches the server's files, other \
                             databases or other sessions",
                            f.to_lowercase()
                        ));
                    }
                }
                // A string may be a function body (`AS '…'`) or dynamic SQL: read as code
                // when it holds what code here could do.
                if depth < 4
                    && matches!(t, Token::Str(_))
                    && ["PROGRAM", "EXECUTE", "COPY"]
                        .iter()
                        .any(|w| up.contains(w))
                {
                    if let Some(r) = scan(&tokens_of_str(s), depth + 1) {
                        return Some(r);
                    }
                }
            }
            Token::Dollar(body) => {
                if depth < 4 {
                    if let Some(r) = scan(&tokens(body), depth + 1) {
                        return Some(r);
                    }
                }
            }
            Token::Punct(_) => {}
        }
    }
    None
}

fn tokens_of_str(s: &str) -> Vec<Token> {
    tokens(s)
}

/// After a `COPY` word: whether it writes to or reads from anything but the client.
fn copy_target(rest: &[Token]) -> Option<String> {
    let mut depth = 0i32;
    for (i, t) in rest.iter().enumerate() {
        match t {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth -= 1,
            Token::Punct(';') => return None,
            Token::Word(w) if depth == 0 && (w == "TO" || w == "FROM") => {
                return match rest.get(i + 1) {
                    Some(Token::Word(x)) if x == "PROGRAM" => {
                        Some("COPY … PROGRAM runs a command on the database server".into())
                    }
                    Some(Token::Str(f)) => Some(format!(
                        "COPY {} a server file ({})",
                        w.to_lowercase(),
                        clip(f)
                    )),
                    _ => None,
                };
            }
            _ => {}
        }
    }
    None
}

/// The database a `\connect` line names: `\connect notes`, `\connect "my db"`,
/// `\connect -reuse-previous=on "dbname='my db'"`. `None` when it names more (a user,
/// a host) or cannot be read.
fn connect_target(args: &str) -> Option<String> {
    let args = args.trim();
    if let Some(rest) = args.strip_prefix("-reuse-previous=on") {
        let q = rest.trim();
        let inner = q
            .strip_prefix('"')?
            .strip_suffix('"')?
            .replace("\"\"", "\"");
        let v = inner.strip_prefix("dbname=")?;
        let v = v.strip_prefix('\'')?.strip_suffix('\'')?;
        if v.contains('\'') && !v.contains("\\'") {
            return None;
        }
        return Some(v.replace("\\'", "'").replace("\\\\", "\\"));
    }
    if let Some(q) = args.strip_prefix('"') {
        let inner = q.strip_suffix('"')?;
        if inner.replace("\"\"", "").contains('"') {
            return None;
        }
        return Some(inner.replace("\"\"", "\""));
    }
    if args.is_empty() || args.contains(char::is_whitespace) || args.contains('=') {
        return None;
    }
    Some(args.to_string())
}

/// Judge a backslash line. The old script's dumps hold `\connect` to their own
/// database and (pg_dump since August 2025) `\restrict` / `\unrestrict`; no other
/// backslash command is ever run.
pub fn judge_meta(text: &str, ctx: &Context) -> Verdict {
    let t = text.trim_start_matches('\\');
    let (cmd, args) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
    match cmd {
        "connect" | "c" => match (connect_target(args), &ctx.own_database) {
            (Some(db), Some(own)) if &db == own => Skip("\\connect to the archive's own database"),
            (Some(db), Some(own)) => Refuse(format!(
                "\\connect to another database ({db}; the archive's own is {own})"
            )),
            (Some(db), None) => Refuse(format!(
                "\\connect to {db} before the archive named its own database"
            )),
            (None, _) => Refuse(format!(
                "a \\connect this restore cannot read: {}",
                clip(text)
            )),
        },
        "restrict" | "unrestrict" => {
            Skip("psql's \\restrict guard (no backslash command runs here)")
        }
        _ => Refuse(format!(
            "a psql backslash command ({}): this restore runs SQL only",
            clip(text)
        )),
    }
}

use Verdict::{Refuse, Run, Skip};

/// Judge one statement. `ctx` learns the archive's own database from its first
/// `DROP DATABASE` / `CREATE DATABASE`.
pub fn judge(text: &str, ctx: &mut Context) -> Verdict {
    let toks = tokens(text);
    let w = |i: usize| word(toks.get(i));
    if let Some(r) = scan(&toks, 0) {
        return Refuse(r);
    }
    // A database-level statement: only about the archive's own database.
    let db_at = match (w(0), w(1)) {
        ("DROP", "DATABASE") => Some(if w(2) == "IF" && w(3) == "EXISTS" { 4 } else { 2 }),
        ("CREATE" | "ALTER", "DATABASE") => Some(2),
        ("COMMENT" | "SECURITY", _) if toks.iter().take(5).any(|t| matches!(t, Token::Word(x) if x == "DATABASE")) => toks
            .iter()
            .position(|t| matches!(t, Token::Word(x) if x == "DATABASE"))
            .map(|p| p + 1),
        ("GRANT" | "REVOKE", _) => toks
            .windows(2)
            .position(|p| matches!((&p[0], &p[1]), (Token::Word(a), Token::Word(b)) if a == "ON" && b == "DATABASE"))
            .map(|p| p + 2),
        _ => None,
    };
    if let Some(at) = db_at {
        let Some(name) = name_of(toks.get(at)) else {
            return Refuse("a database statement this restore cannot read".into());
        };
        match &ctx.own_database {
            None if matches!(w(0), "DROP" | "CREATE") => {
                ctx.own_database = Some(name);
                return Skip("the archive's own database: the named target stands in for it");
            }
            Some(own) if own == &name => {
                if w(0) == "ALTER" && w(3) == "RENAME" {
                    return Refuse("ALTER DATABASE … RENAME".into());
                }
                return Skip("the archive's own database: the named target stands in for it");
            }
            _ => {
                return Refuse(format!(
                    "a statement on another database ({name}{})",
                    ctx.own_database
                        .as_ref()
                        .map(|o| format!("; the archive's own is {o}"))
                        .unwrap_or_default()
                ))
            }
        }
    }
    match w(0) {
        "SET" => {
            let name = if w(1) == "SESSION" || w(1) == "LOCAL" {
                w(1).to_string()
            } else {
                name_of(toks.get(1)).unwrap_or_default().to_uppercase()
            };
            if FIXED_SETTINGS.contains(&name.as_str()) {
                // pg_dump's own values are harmless and already in force.
                let value = toks.get(3).and_then(|t| match t {
                    Token::Word(v) => Some(v.to_lowercase()),
                    Token::Str(v) => Some(v.to_lowercase()),
                    _ => None,
                });
                return match (name.as_str(), value.as_deref()) {
                    ("STANDARD_CONFORMING_STRINGS", Some("on")) => Skip("already on"),
                    ("CLIENT_ENCODING", Some("utf8")) => Skip("already UTF8"),
                    _ => Refuse(format!(
                        "SET {} is not something this restore lets a script change",
                        name.to_lowercase()
                    )),
                };
            }
            Run
        }
        "RESET" => Refuse("RESET is not something pg_dump writes".into()),
        "SELECT" => {
            // pg_dump's SELECTs: pg_catalog.set_config('search_path', …), setval, and
            // the large-object calls.
            let f = match (w(1), toks.get(2), w(3), toks.get(4)) {
                ("PG_CATALOG", Some(Token::Punct('.')), f, Some(Token::Punct('('))) => f,
                _ => {
                    return Refuse(format!(
                        "a SELECT that pg_dump does not write: {}",
                        clip(text)
                    ))
                }
            };
            match f {
                "SET_CONFIG" => match toks.get(5) {
                    Some(Token::Str(s)) if s == "search_path" => Run,
                    _ => Refuse("set_config of a setting other than search_path".into()),
                },
                "SETVAL" | "LO_CREATE" | "LO_OPEN" | "LOWRITE" | "LO_CLOSE" => Run,
                _ => Refuse(format!(
                    "a SELECT that pg_dump does not write: {}",
                    clip(text)
                )),
            }
        }
        "CREATE" | "ALTER" | "DROP" => {
            let mut i = 1;
            if w(0) == "CREATE" && w(1) == "OR" && w(2) == "REPLACE" {
                i = 3;
            }
            if w(0) == "CREATE" && w(i) == "TRUSTED" {
                i += 1;
            }
            let what = w(i);
            let next = w(i + 1);
            match what {
                "ROLE" | "USER" | "GROUP" => Refuse(format!(
                    "{} {what} changes a role, which belongs to the whole server",
                    w(0)
                )),
                "SYSTEM" => Refuse("ALTER SYSTEM changes the server's configuration".into()),
                "TABLESPACE" => Refuse(format!(
                    "{} TABLESPACE reaches the server's file system",
                    w(0)
                )),
                "SERVER" | "SUBSCRIPTION" => {
                    Refuse(format!("{} {what} reaches another server", w(0)))
                }
                "FOREIGN" if next == "DATA" => {
                    Refuse("a foreign-data wrapper reaches outside the database".into())
                }
                "PROCEDURAL" | "LANGUAGE" => Refuse(format!(
                    "{} {what}: a language is the server's, not the database's",
                    w(0)
                )),
                "OWNED" => Refuse("DROP OWNED is not something pg_dump writes".into()),
                "EXTENSION" => {
                    let mut j = i + 1;
                    if w(j) == "IF" {
                        j += if w(j + 1) == "NOT" { 3 } else { 2 };
                    }
                    let ext = name_of(toks.get(j)).unwrap_or_default().to_uppercase();
                    if w(0) != "DROP" && UNSAFE_EXTENSIONS.contains(&ext.as_str()) {
                        Refuse(format!(
                            "the extension {} reaches the server's files or other servers",
                            ext.to_lowercase()
                        ))
                    } else {
                        Run
                    }
                }
                "DATABASE" => Refuse("a database statement".into()),
                "" => Refuse(format!(
                    "a statement this restore cannot read: {}",
                    clip(text)
                )),
                _ => Run,
            }
        }
        "COMMENT" | "SECURITY" | "REFRESH" | "INSERT" => Run,
        "GRANT" | "REVOKE" => {
            // Privileges on objects name them with ON; without ON it is role membership.
            let on = toks
                .iter()
                .any(|t| matches!(t, Token::Word(x) if x == "ON"));
            if !on {
                return Refuse(format!(
                    "{} of a role (role membership belongs to the whole server)",
                    w(0)
                ));
            }
            if toks.windows(2).any(|p| matches!((&p[0], &p[1]), (Token::Word(a), Token::Word(b)) if a == "ON" && (b == "TABLESPACE" || b == "FOREIGN"))) {
                return Refuse(format!("{} on a tablespace or foreign server", w(0)));
            }
            Run
        }
        "COPY" => {
            // Only pg_dump's form: COPY name [(columns)] FROM stdin;
            let mut depth = 0;
            let mut from = None;
            for (k, t) in toks.iter().enumerate().skip(1) {
                match t {
                    Token::Punct('(') => depth += 1,
                    Token::Punct(')') => depth -= 1,
                    Token::Word(x) if depth == 0 && (x == "FROM" || x == "TO") => {
                        from = Some(k);
                        break;
                    }
                    _ => {}
                }
            }
            match from {
                Some(k)
                    if w(k) == "FROM"
                        && w(k + 1) == "STDIN"
                        && matches!(toks.get(k + 2), Some(Token::Punct(';')) | None) =>
                {
                    Verdict::CopyIn
                }
                Some(k) => match copy_target(&toks[k..]) {
                    Some(r) => Refuse(r),
                    None => Refuse(format!(
                        "a COPY that pg_dump does not write: {}",
                        clip(text)
                    )),
                },
                None => Refuse(format!(
                    "a COPY that pg_dump does not write: {}",
                    clip(text)
                )),
            }
        }
        "BEGIN" | "COMMIT" | "END" | "START" if toks.len() <= 3 => {
            Skip("transaction control: the whole restore is one transaction")
        }
        _ => Refuse(format!(
            "{} is not something pg_dump writes",
            match toks.first() {
                Some(Token::Word(x)) => x.clone(),
                _ => clip(text),
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(script: &str) -> Result<Vec<Item>, Refusal> {
        let mut s = Splitter::new();
        let mut out = Vec::new();
        for (n, line) in script.split_inclusive('\n').enumerate() {
            out.extend(s.line(n as u64 + 1, line)?);
        }
        s.finish(script.lines().count() as u64)?;
        Ok(out)
    }

    fn statements(script: &str) -> Vec<String> {
        split(script)
            .unwrap()
            .into_iter()
            .map(|i| match i {
                Item::Statement { text, .. } | Item::Meta { text, .. } => text,
            })
            .collect()
    }

    #[test]
    fn splits_on_semicolons_outside_quotes_comments_and_dollar_quotes() {
        let got = statements(
            "SELECT 'a;b', \"c;d\";\n-- x; y\nCREATE FUNCTION f() RETURNS int AS $body$\nSELECT 1;\n$body$ LANGUAGE sql; /* a; /* nested; */ b; */ SELECT E'\\';', $$;$$;\n",
        );
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[1].starts_with("CREATE FUNCTION") && got[1].ends_with("LANGUAGE sql;"));
        assert!(got[2].contains("E'\\';'"), "{got:?}");
    }

    #[test]
    fn backslash_lines_are_items_only_between_statements() {
        let got = split("SELECT 1;\n  \\connect notes\nSELECT $$\n\\! id\n$$;\n").unwrap();
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[1], Item::Meta { line: 2, text } if text == "\\connect notes"));
        assert!(matches!(&got[2], Item::Statement { line: 3, .. }));
        let e = split("SELECT 1; \\! id\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = split("SELECT 1\n\\! id\n;\n").unwrap_err();
        assert!(e.reason.contains("backslash"), "{e}");
    }

    #[test]
    fn an_open_quote_at_the_end_is_refused() {
        for s in [
            "SELECT 'abc;\n",
            "SELECT $x$ abc;\n",
            "SELECT 1\n",
            "/* abc\n",
        ] {
            assert!(split(s).is_err(), "{s}");
        }
    }

    fn verdict(sql: &str) -> Verdict {
        let mut ctx = Context {
            own_database: Some("notes".into()),
        };
        judge(sql, &mut ctx)
    }

    #[test]
    fn what_pg_dump_writes_runs() {
        for s in [
            "SET statement_timeout = 0;",
            "SET default_tablespace = '';",
            "SELECT pg_catalog.set_config('search_path', '', false);",
            "CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;",
            "CREATE TABLE public.notes (id uuid DEFAULT public.gen_random_uuid() NOT NULL, body bytea);",
            "ALTER TABLE public.notes OWNER TO notes;",
            "CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at = now(); RETURN NEW; END $$;",
            "SELECT pg_catalog.setval('public.s', 42, true);",
            "GRANT ALL ON SCHEMA public TO notes;",
            "COMMENT ON TABLE public.notes IS 'a program of notes';",
            "DROP TABLE IF EXISTS public.notes;",
        ] {
            assert_eq!(verdict(s), Run, "{s}");
        }
        assert_eq!(
            verdict("COPY public.notes (id, body) FROM stdin;"),
            Verdict::CopyIn
        );
        for s in [
            "DROP DATABASE IF EXISTS notes;",
            "ALTER DATABASE notes OWNER TO notes;",
            "ALTER DATABASE notes SET search_path TO public;",
            "SET standard_conforming_strings = on;",
            "SET client_encoding = 'UTF8';",
        ] {
            assert!(matches!(verdict(s), Skip(_)), "{s}");
        }
        let mut ctx = Context::default();
        assert!(matches!(
            judge("DROP DATABASE IF EXISTS \"Notes\";", &mut ctx),
            Skip(_)
        ));
        assert_eq!(ctx.own_database.as_deref(), Some("Notes"));
        assert!(matches!(
            judge_meta("\\connect -reuse-previous=on \"dbname='Notes'\"", &ctx),
            Skip(_)
        ));
        assert!(matches!(judge_meta("\\connect \"Notes\"", &ctx), Skip(_)));
        assert!(matches!(judge_meta("\\connect other", &ctx), Refuse(_)));
        assert!(matches!(judge_meta("\\restrict abc", &ctx), Skip(_)));
    }

    #[test]
    fn what_reaches_outside_is_refused() {
        for s in [
            "COPY (SELECT 1) TO PROGRAM 'id';",
            "COPY public.t FROM PROGRAM 'id';",
            "COPY public.t TO '/tmp/x';",
            "COPY public.t FROM '/etc/passwd';",
            "copy public.t from stdin with (format csv) ; ",
            "DROP DATABASE other;",
            "CREATE DATABASE other;",
            "ALTER DATABASE other OWNER TO x;",
            "GRANT CONNECT ON DATABASE other TO public;",
            "CREATE ROLE evil SUPERUSER;",
            "ALTER ROLE notes SUPERUSER;",
            "ALTER USER notes PASSWORD 'x';",
            "DROP ROLE notes;",
            "GRANT pg_execute_server_program TO notes;",
            "ALTER SYSTEM SET work_mem = '1GB';",
            "SELECT pg_read_file('/etc/passwd');",
            "SELECT pg_catalog.pg_read_file('/etc/passwd');",
            "SELECT lo_import('/etc/passwd');",
            "CREATE TABLE t AS SELECT pg_ls_dir('.');",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN COPY (SELECT 1) TO '/tmp/x'; END $$;",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $q$ BEGIN EXECUTE 'COPY t TO PROGRAM ''id'''; END $q$;",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS 'BEGIN PERFORM pg_read_file(''/x''); END';",
            "CREATE FUNCTION f() RETURNS int LANGUAGE c AS '/tmp/evil.so', 'f';",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'CO' || 'PY t TO PRO' || 'GRAM ''id'''; END $$;",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE format('COPY t TO %s', 'PRO' || 'GRAM ''id'''); END $$;",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ DECLARE q text := 'x'; BEGIN EXECUTE q; END $$;",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'COPY t TO ''/tmp/x'''; END $$;",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS 'BEGIN EXECUTE ''CO'' || ''PY t TO PRO'' || ''GRAM ''''id''''''; END';",
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS $$ import os $$;",
            "CREATE EXTENSION adminpack;",
            "CREATE EXTENSION IF NOT EXISTS dblink;",
            "CREATE TABLESPACE t LOCATION '/tmp';",
            "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw;",
            "CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p;",
            "SET ROLE postgres;",
            "SET SESSION AUTHORIZATION postgres;",
            "SET standard_conforming_strings = off;",
            "SET client_encoding = 'LATIN1';",
            "SELECT set_config('role', 'postgres', false);",
            "SELECT pg_catalog.set_config('session_authorization', 'postgres', false);",
            "DO $$ BEGIN PERFORM 1; END $$;",
            "ROLLBACK;",
            "LOAD '/tmp/evil.so';",
            "UPDATE pg_catalog.pg_authid SET rolsuper = true;",
            "CHECKPOINT;",
        ] {
            assert!(matches!(verdict(s), Refuse(_)), "{s}: {:?}", verdict(s));
        }
    }
}
