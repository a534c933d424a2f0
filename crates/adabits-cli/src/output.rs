//! How the commands print: the tables several commands share, and `--json`.

use adabits_models::BitRow;
use adabits_train::BitResult;
use serde::Serialize;

/// Prints `value` as pretty JSON on stdout (what `--json` prints).
pub(crate) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The entries of a map keyed by bit-width (`"8"`, `"32"`), highest bit-width first: the order
/// every command lists bit-widths in (the default lists' order), not the keys' text order.
pub(crate) fn highest_first<'a, V>(
    map: impl IntoIterator<Item = (&'a String, &'a V)>,
) -> Vec<(&'a String, &'a V)> {
    let mut entries: Vec<(&String, &V)> = map.into_iter().collect();
    entries.sort_by_key(|(k, _)| std::cmp::Reverse(k.parse::<adabits_quant::Precision>().ok()));
    entries
}

/// Prints one table row per bit-width: top-1, top-5, loss, GBitOPs and bytes (`train`, `eval`).
pub(crate) fn print_results<'a>(rows: impl IntoIterator<Item = (String, &'a BitResult)>) {
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>10} {:>12}",
        "bits", "top-1", "top-5", "loss", "GBitOPs", "bytes"
    );
    for (bits, r) in rows {
        println!(
            "{bits:>6} {:>7.2}% {:>7.2}% {:>8.4} {:>10.4} {:>12}",
            r.top1, r.top5, r.loss, r.gbitops, r.bytes
        );
    }
}

/// Prints an artifact's table: top-1 (where known), GBitOPs and model bytes per bit-width.
pub(crate) fn print_artifact_table(table: &[BitRow]) {
    println!(
        "{:>6} {:>8} {:>10} {:>12}",
        "bits", "top-1", "GBitOPs", "model bytes"
    );
    for r in table {
        let top1 = r.top1.map_or("–".to_string(), |t| format!("{t:.2}%"));
        println!(
            "{:>6} {top1:>8} {:>10.4} {:>12.0}",
            r.bits, r.gbitops, r.model_bytes
        );
    }
}
