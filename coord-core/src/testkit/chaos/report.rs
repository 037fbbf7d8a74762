//! What one scenario did to one lock kind, and the results table the chaos
//! suite writes (to a file, and into the README between markers).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

/// The results of one lock kind in one scenario.
#[derive(Debug, Clone, Default)]
pub struct ScenarioReport {
    /// The scenario, e.g. `etcd: leader killed`.
    pub scenario: String,
    /// The lock kind, e.g. `lease`, `semaphore(2)`.
    pub kind: String,
    /// How long the workers ran.
    pub duration: Duration,
    /// Grants the workers got.
    pub acquisitions: u64,
    /// Acquisitions that failed with a backend error or timed out.
    pub failed_acquisitions: u64,
    /// Holds granted while another was still believed held (more than the
    /// permits for a semaphore).
    pub overlaps: Vec<String>,
    /// What the fence audit of the accepted writes found (tokens going
    /// backwards, interleaved holds); empty for semaphores (permits write
    /// side by side).
    pub audit_violations: Vec<String>,
    /// Loss signals that came after a newer grant.
    pub late_losses: Vec<String>,
    /// Writes the fenced resource refused (a holder that had lost its lock).
    pub refused_writes: u64,
    /// From the fault to the first grant after it.
    pub next_grant_after_fault: Option<Duration>,
    /// From the heal to the first grant after it.
    pub next_grant_after_heal: Option<Duration>,
    /// Locks still held once every worker had released.
    pub left_at_end: usize,
    /// Locks still held a TTL (and a margin) later.
    pub left_after_ttl: usize,
    /// Whether overlaps are a documented outcome of this scenario (Redis
    /// failovers: asynchronous replication can lose a grant; an etcd server
    /// with a known lease fault), so that only the audit of fenced writes
    /// counts as a violation. Late losses are then allowed too: they are the
    /// old holder's side of the same overlap.
    pub overlaps_allowed: bool,
    /// Uncontended lease acquisitions of a lock of their own while the
    /// fault lasted: (granted, tried). The same for every kind of a scenario.
    pub uncontended_during_fault: Option<(u64, u64)>,
    /// Whether the checkers reported the negative control's injected
    /// overlap and stale write (they must).
    pub control_caught: bool,
}

impl ScenarioReport {
    /// The violations that fail the scenario: the audit's, and overlaps
    /// and late losses unless the scenario allows overlaps.
    pub fn violations(&self) -> Vec<String> {
        let mut v = self.audit_violations.clone();
        if !self.overlaps_allowed {
            v.extend(self.late_losses.iter().cloned());
            v.extend(self.overlaps.iter().cloned());
        }
        v
    }

    /// The table's header, in Markdown.
    pub fn header() -> &'static str {
        "| scenario | kind | run | grants | failed | violations | overlaps | refused writes | next grant after fault / heal | uncontended grants during the fault | left behind (end / after TTL) | control caught |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|"
    }

    /// This report as a Markdown table row.
    pub fn row(&self) -> String {
        let ms =
            |d: Option<Duration>| d.map_or("none".to_owned(), |d| format!("{} ms", d.as_millis()));
        let overlaps = if self.overlaps_allowed {
            format!("{} (allowed)", self.overlaps.len())
        } else {
            self.overlaps.len().to_string()
        };
        format!(
            "| {} | {} | {:.0} s | {} | {} | {} | {} | {} | {} / {} | {} | {} / {} | {} |",
            self.scenario,
            self.kind,
            self.duration.as_secs_f64(),
            self.acquisitions,
            self.failed_acquisitions,
            self.violations().len(),
            overlaps,
            self.refused_writes,
            ms(self.next_grant_after_fault),
            ms(self.next_grant_after_heal),
            self.uncontended_during_fault
                .map_or("none".to_owned(), |(g, t)| format!("{g} / {t}")),
            self.left_at_end,
            self.left_after_ttl,
            if self.control_caught { "yes" } else { "NO" },
        )
    }
}

/// The whole table: a line on how it was made, the header, one row per report.
pub fn table(reports: &[ScenarioReport], how: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{how}\n");
    let _ = writeln!(out, "{}", ScenarioReport::header());
    for r in reports {
        let _ = writeln!(out, "{}", r.row());
    }
    out
}

/// The markers between which [`write_into_readme`] puts the table.
pub const README_MARKERS: (&str, &str) =
    ("<!-- chaos-results:begin -->", "<!-- chaos-results:end -->");

/// Replaces the text between the [`README_MARKERS`] of the file at `path`
/// with `table`.
pub fn write_into_readme(path: &Path, table: &str) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", path.display())))?;
    let (begin, end) = README_MARKERS;
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        return Err(Error::invalid(format!(
            "{} has no {begin} … {end} markers for the chaos results",
            path.display()
        )));
    };
    if e < b {
        return Err(Error::invalid(format!(
            "{end} comes before {begin} in {}",
            path.display()
        )));
    }
    let updated = format!("{}{begin}\n{table}{}", &text[..b], &text[e..]);
    std::fs::write(path, updated)
        .map_err(|e| Error::invalid(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_count_violations_and_the_readme_section_is_replaced() {
        let mut r = ScenarioReport {
            scenario: "s".into(),
            kind: "lease".into(),
            overlaps: vec!["o".into()],
            late_losses: vec!["l".into()],
            control_caught: true,
            ..ScenarioReport::default()
        };
        assert_eq!(r.violations().len(), 2);
        r.overlaps_allowed = true;
        assert!(r.violations().is_empty());
        r.audit_violations = vec!["a".into()];
        assert_eq!(r.violations(), vec!["a".to_owned()]);
        r.audit_violations.clear();
        assert!(r.row().contains("1 (allowed)"), "{}", r.row());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("README.md");
        let (b, e) = README_MARKERS;
        std::fs::write(&path, format!("top\n{b}\nold\n{e}\nbottom\n")).unwrap();
        write_into_readme(&path, &table(&[r], "made by a test")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("top\n") && text.ends_with(&format!("{e}\nbottom\n")));
        assert!(
            text.contains("made by a test") && !text.contains("old"),
            "{text}"
        );
        std::fs::write(&path, "no markers").unwrap();
        assert!(write_into_readme(&path, "t").is_err());
    }
}
