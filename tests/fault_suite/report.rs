//! The suite's one table: each scenario records its row, the file `target/fault-suite.md` is
//! rewritten with every row so far, and the table is printed once, when the test process exits
//! (after libtest's own summary, whichever scenarios ran and whether they passed).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Mutex, Once, PoisonError};

use crate::suite::Size;

/// One scenario's figures.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) tasks: usize,
    pub(crate) delivered: usize,
    pub(crate) dead_lettered: usize,
    pub(crate) held: usize,
    pub(crate) lost: usize,
    pub(crate) duplicated: usize,
    pub(crate) notes: String,
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());
static PRINT_AT_EXIT: Once = Once::new();

unsafe extern "C" {
    /// C's `atexit`: registers a function to run when the process exits. Safe to call: it only
    /// stores the pointer, and the function given never unwinds.
    safe fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
}

/// Records a scenario's row. Call it before asserting, so a failing scenario still shows.
pub(crate) fn record(row: Row) {
    println!(
        "fault suite: {}: {} tasks, {} delivered, {} dead-lettered, {} held, {} lost, {} duplicated; {}",
        row.scenario,
        row.tasks,
        row.delivered,
        row.dead_lettered,
        row.held,
        row.lost,
        row.duplicated,
        row.notes
    );
    let table = {
        let mut rows = ROWS.lock().unwrap_or_else(PoisonError::into_inner);
        rows.retain(|r| r.scenario != row.scenario);
        rows.push(row);
        rows.sort_by(|a, b| a.scenario.cmp(&b.scenario));
        render(&rows)
    };
    let path = report_path();
    if let Err(e) = std::fs::write(&path, table) {
        eprintln!("fault suite: cannot write {}: {e}", path.display());
    }
    PRINT_AT_EXIT.call_once(|| {
        if atexit(print_table) != 0 {
            eprintln!("fault suite: cannot print the table at exit; see target/fault-suite.md");
        }
    });
}

extern "C" fn print_table() {
    let rows = ROWS.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = writeln!(std::io::stdout(), "\n{}", render(&rows));
}

fn render(rows: &[Row]) -> String {
    let size = match Size::get() {
        Size::Short => "short",
        Size::Full => "full",
    };
    let mut table = format!(
        "Fault suite (FAULT_SUITE={size})\n\n\
         | scenario | tasks | delivered | dead-lettered | still held | lost | duplicated | notes |\n\
         |---|---:|---:|---:|---:|---:|---:|---|\n"
    );
    for r in rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.tasks,
            r.delivered,
            r.dead_lettered,
            r.held,
            r.lost,
            r.duplicated,
            r.notes
        );
    }
    table
}

/// `target/fault-suite.md`, found from the test binary's own path (`target/<profile>/deps/…`), so
/// that `CARGO_TARGET_DIR` is honoured.
fn report_path() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        (deps.file_name()? == "deps").then(|| deps.parent()?.parent().map(PathBuf::from))?
    });
    from_exe
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("fault-suite.md")
}
