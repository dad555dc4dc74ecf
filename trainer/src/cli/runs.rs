//! `diffit train --list-runs` / `diffit runs list` (the seed's table) and `diffit runs show N`.
//! Runs the seed system wrote are rows like ours, marked read-only; the base-training runs
//! (`base_training/`, the seed's or ours) follow in a section of their own.

use std::path::Path;

use anyhow::Context as _;

use format::annotations::{AnnotationError, Annotations};
use format::api::RunState;
use format::seed::{BASE_TRAINING_DIR, SEED_RUN_NOTE};
use format::RunLayout;
use store::annotations::{read_annotations, update_annotations, AnnotateError};
use store::{list_all_runs, list_base_training_runs, CheckpointManager, RunListing};

use super::{NoteArgs, TagArgs};

/// The seed's column widths (`Run #`, `Experiment`, `Created`; one space between columns); a
/// longer cell widens its column for every row, so the columns stay aligned.
const MIN_WIDTHS: [usize; 3] = [8, 25, 21];
/// The column titles.
const TITLES: [&str; 4] = ["Run #", "Experiment", "Created", "Checkpoints"];
/// Width of the seed's rule lines.
const RULE_WIDTH: usize = 80;

/// `2025-01-15T10:30:00.123456` is shown as `2025-01-15 10:30:00`, as in the seed's table: the
/// date and time split by a space, fractions of a second dropped; any zone is kept.
pub fn created_cell(stamp: &str) -> String {
    let spaced = stamp.replacen('T', " ", 1);
    match spaced.get(19..).and_then(|rest| rest.strip_prefix('.')) {
        Some(fraction) => {
            let zone = fraction.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{}{zone}", &spaced[..19])
        }
        None => spaced,
    }
}

/// One row: the cells of the aligned columns and the rest of the line, or a broken run's error.
enum Row {
    Run([String; 3], String),
    Broken(String, String),
}

fn row(run: &RunListing) -> Row {
    let number = run.run_number.to_string();
    match &run.info {
        Ok(info) => {
            // Finished runs read as in the seed; any other state follows the count.
            let state = match (&info.seed, info.state()) {
                (Some(seed), _) => format!("  ({})", seed.label()),
                (None, RunState::Finished) => String::new(),
                (None, other) => format!("  ({})", other.as_str()),
            };
            Row::Run(
                [
                    number,
                    info.experiment_name.clone(),
                    created_cell(&info.created_at),
                ],
                format!("{}{state}", info.checkpoints_count),
            )
        }
        Err(e) => Row::Broken(number, format!("BROKEN: {e}")),
    }
}

/// The seed's run table: one line per run, starting with its number; broken runs say why.
/// `base_training` (the runs in `base_training/`) follow in their own section.
pub fn format_runs_table(runs: &[RunListing], base_training: &[RunListing]) -> String {
    let main: Vec<Row> = runs.iter().map(row).collect();
    let base: Vec<Row> = base_training.iter().map(row).collect();
    let mut widths = MIN_WIDTHS;
    for r in main.iter().chain(&base) {
        match r {
            Row::Run(cells, _) => {
                for (width, cell) in widths.iter_mut().zip(cells) {
                    *width = (*width).max(cell.chars().count());
                }
            }
            Row::Broken(number, _) => widths[0] = widths[0].max(number.chars().count()),
        }
    }
    let [w0, w1, w2] = widths;
    let line = |cells: [&str; 3], rest: &str| {
        format!(
            "{:<w0$} {:<w1$} {:<w2$} {rest}\n",
            cells[0], cells[1], cells[2]
        )
    };
    let rule_width = RULE_WIDTH.max(w0 + w1 + w2 + 3 + TITLES[3].len());
    let rule = |c: char| {
        format!(
            "{}\n",
            String::from_iter(std::iter::repeat_n(c, rule_width))
        )
    };
    let body = |rows: &[Row], out: &mut String| {
        for r in rows {
            out.push_str(&match r {
                Row::Run(cells, rest) => line([&cells[0], &cells[1], &cells[2]], rest),
                Row::Broken(number, error) => format!("{number:<w0$} {error}\n"),
            });
        }
    };

    let mut out = String::from("Available Training Runs:\n");
    out.push_str(&rule('='));
    out.push_str(&line([TITLES[0], TITLES[1], TITLES[2]], TITLES[3]));
    out.push_str(&rule('-'));
    body(&main, &mut out);
    if !base.is_empty() {
        out.push_str(&rule('-'));
        out.push_str(&format!(
            "Base-training runs, in {BASE_TRAINING_DIR}/ (show one with --checkpoints \
             DIR/{BASE_TRAINING_DIR}):\n"
        ));
        body(&base, &mut out);
    }
    out.push_str(&rule('='));
    let has_seed = |listing: &[RunListing]| {
        listing
            .iter()
            .any(|r| r.info.as_ref().is_ok_and(|i| i.seed.is_some()))
    };
    if has_seed(runs) || has_seed(base_training) {
        out.push_str(&format!("Seed runs: {SEED_RUN_NOTE}.\n"));
    }
    out
}

/// The checkpoints dir of a command that reads runs from a local disk; an object-store URL
/// is refused with the way to bring its runs down (`diffit sync`).
pub(crate) fn local_dir<'a>(dir: &'a Path, command: &str) -> anyhow::Result<&'a Path> {
    match remote::Location::parse(&dir.to_string_lossy()) {
        Ok(remote::Location::Objects(url)) => anyhow::bail!(
            "`diffit {command}` reads runs from a local checkpoints dir, not {url}: bring them \
             down first with `diffit sync {url} DIR`, then pass --checkpoints DIR"
        ),
        _ => Ok(dir),
    }
}

/// Prints the table of runs under `base_dir`, a checkpoints dir or an object-store URL.
pub fn print_runs_table(base_dir: &Path) -> anyhow::Result<()> {
    let location = remote::Location::parse(&base_dir.to_string_lossy())?;
    let (runs, base_training) = match &location {
        remote::Location::Local(dir) => (list_all_runs(dir)?, list_base_training_runs(dir)?),
        remote::Location::Objects(url) => {
            let bucket = remote::Bucket::open(url)?;
            let runs = remote::list_runs(&bucket)
                .with_context(|| format!("cannot list the runs in {url}"))?;
            (runs, Vec::new())
        }
    };
    if runs.is_empty() && base_training.is_empty() {
        println!("No training runs in {location}");
        return Ok(());
    }
    print!("{}", format_runs_table(&runs, &base_training));
    Ok(())
}

/// Prints the summary of run `run_number`.
pub fn show_run(base_dir: &Path, run_number: u32) -> anyhow::Result<()> {
    let run = CheckpointManager::open_read_only(local_dir(base_dir, "runs show")?, run_number)
        .with_context(|| format!("cannot show run {run_number}"))?;
    print!("{}", run.get_run_summary());
    Ok(())
}

/// Applies an annotation change to a run of a local checkpoints dir and returns the result. A
/// refused change (a bad tag, a note too long) is a usage error; nothing is written then.
fn annotate(
    base_dir: &Path,
    run_number: u32,
    command: &str,
    change: impl FnOnce(&mut Annotations) -> Result<(), AnnotationError>,
) -> anyhow::Result<Annotations> {
    let layout = RunLayout::new(local_dir(base_dir, command)?, run_number);
    update_annotations(&layout, change).map_err(|e| match e {
        AnnotateError::Refused(reason) => {
            crate::train::TrainError::Usage(format!("cannot annotate run {run_number}: {reason}"))
                .into()
        }
        AnnotateError::Store(e) => {
            anyhow::Error::new(e).context(format!("cannot annotate run {run_number}"))
        }
    })
}

/// `diffit runs tag N TAG... [--remove TAG]...`: prints the run's tags after the change.
pub fn tag_run(args: &TagArgs) -> anyhow::Result<()> {
    let after = annotate(&args.dir.checkpoints, args.run_number, "runs tag", |a| {
        a.retag(&args.tags, &args.remove)
    })?;
    println!(
        "run {}: tags {}",
        args.run_number,
        if after.tags.is_empty() {
            "(none)".to_string()
        } else {
            after.tags.join(" ")
        }
    );
    Ok(())
}

/// `diffit runs note N [TEXT | --clear]`: sets or clears the note, or prints it.
pub fn note_run(args: &NoteArgs) -> anyhow::Result<()> {
    let (base, n) = (&args.dir.checkpoints, args.run_number);
    let annotations = match (&args.text, args.clear) {
        (None, false) => {
            let layout = RunLayout::new(local_dir(base, "runs note")?, n);
            if !layout.metadata().is_file() {
                anyhow::bail!("run {n} not found: no {}", layout.metadata().display());
            }
            read_annotations(&layout)?
        }
        (text, _) => annotate(base, n, "runs note", |a| a.set_note(text.as_deref()))?,
    };
    match annotations.note {
        Some(note) => println!("{note}"),
        None => println!("run {n} has no note"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use format::api::RunInfo;
    use format::{RunStatus, SeedRun, SeedRunKind};

    use super::*;

    fn listing(n: u32, experiment: &str, created: &str, seed: Option<SeedRunKind>) -> RunListing {
        RunListing {
            run_number: n,
            dir: PathBuf::from(format!("ck/run_{n:03}")),
            info: Ok(RunInfo {
                experiment_name: experiment.into(),
                created_at: created.into(),
                updated_at: None,
                recorded_status: RunStatus::Finished,
                status_reason: None,
                checkpoints_count: 12,
                last_epoch: Some(12),
                best: None,
                base_val_loss: None,
                writer_active: false,
                seed: seed.map(SeedRun::new),
                tags: vec![],
                note: None,
                params: Default::default(),
            }),
        }
    }

    /// Where each header title starts.
    fn columns(header: &str) -> Vec<usize> {
        TITLES.iter().map(|t| header.find(t).unwrap()).collect()
    }

    /// Every run row's cells start where the header's titles do: each cell begins right after a
    /// run of spaces (or at the line's start) at exactly that position.
    fn assert_aligned(table: &str) {
        let lines: Vec<&str> = table.lines().collect();
        let at = columns(lines[2]);
        let rows = lines
            .iter()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && !l.contains("BROKEN"));
        let mut seen = 0;
        for row in rows {
            seen += 1;
            for &col in &at[1..] {
                let bytes = row.as_bytes();
                assert!(
                    bytes[col] != b' ' && bytes[col - 1] == b' ',
                    "a cell does not start at column {col}:\n{row}\n{}",
                    lines[2]
                );
            }
        }
        assert!(seen > 0, "{table}");
    }

    #[test]
    fn created_drops_microseconds_and_keeps_zones() {
        assert_eq!(
            created_cell("2025-01-15T10:30:00.123456"),
            "2025-01-15 10:30:00"
        );
        assert_eq!(created_cell("2025-01-15T10:30:00"), "2025-01-15 10:30:00");
        assert_eq!(
            created_cell("2025-01-15T10:30:00.5+02:00"),
            "2025-01-15 10:30:00+02:00"
        );
        assert_eq!(created_cell("yesterday"), "yesterday");
    }

    #[test]
    fn seed_rows_keep_the_columns_and_are_marked() {
        let runs = [
            listing(
                1,
                "diffit_lora_trees",
                "2025-01-15T10:30:00.123456",
                Some(SeedRunKind::Lora),
            ),
            listing(2, "diffit_lora_trees", "2025-01-16T14:20:00", None),
            listing(
                1000,
                "an_experiment_name_longer_than_its_column",
                "2025-01-17T09:15:00+02:00",
                None,
            ),
            RunListing {
                run_number: 3,
                dir: PathBuf::from("ck/run_003"),
                info: Err(store::StoreError::BadMetadata {
                    path: PathBuf::from("ck/run_003/metadata.json"),
                    reason: "bad".into(),
                }),
            },
        ];
        let base = [listing(
            1,
            "diffit_base",
            "2025-01-10T09:00:00.000042",
            Some(SeedRunKind::BaseTraining),
        )];
        let table = format_runs_table(&runs, &base);
        assert_aligned(&table);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[4].contains(" 2025-01-15 10:30:00 "), "{table}");
        assert!(lines[4].ends_with("12  (seed run, read-only)"), "{table}");
        assert!(
            lines[5].ends_with(" 12"),
            "finished runs read as in the seed: {table}"
        );
        assert!(
            lines[7].starts_with("3") && lines[7].contains("BROKEN"),
            "{table}"
        );
        assert!(
            table.contains("Base-training runs, in base_training/"),
            "{table}"
        );
        assert!(
            table.contains("12  (seed base training, read-only)"),
            "{table}"
        );
        assert!(
            table.trim_end().ends_with("which this tool does not load."),
            "{table}"
        );
        // Without seed runs nor long cells, the table is the seed's, with no note.
        let plain = format_runs_table(&runs[1..2], &[]);
        assert_aligned(&plain);
        let plain_lines: Vec<&str> = plain.lines().collect();
        assert_eq!(plain_lines.len(), 6, "{plain}");
        assert_eq!(plain_lines[1], "=".repeat(80));
        assert_eq!(
            plain_lines[2],
            "Run #    Experiment                Created               Checkpoints"
        );
        assert_eq!(columns(plain_lines[2]), [0, 9, 35, 57]);
        assert!(plain_lines[4].ends_with(":00   12"), "{plain}");
    }
}
