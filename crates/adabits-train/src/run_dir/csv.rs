//! `metrics.csv`: the epochs of `metrics.jsonl` as a table, for spreadsheets and plotting tools.
//!
//! One row per epoch: the stage, the epoch, the learning rate, the speed, then for each
//! entry seen so far (highest weight bits first, then activation bits: `8`, `w4a8`, `4`; 32 for
//! a full-precision stage) the training loss and
//! top-1 and the validation loss, top-1 and top-5 (and, for a run that keeps a moving average
//! of the weights, that average's validation loss and top-1). A cell of a bit-width an epoch did not train
//! or evaluate is empty. The file is written whole from the run's history after every epoch
//! (and cut back with it on a resume), so it always matches `metrics.jsonl`.

use std::fmt::Write as _;

use crate::records::EpochRecord;

/// The CSV text of `history`.
pub(crate) fn metrics_csv(history: &[EpochRecord]) -> String {
    let mut bits: Vec<&String> = history
        .iter()
        .flat_map(|r| r.train.keys().chain(r.val.keys()))
        .collect();
    bits.sort_by_key(|k| std::cmp::Reverse(k.parse::<adabits_quant::Precision>().ok()));
    bits.dedup();
    let ema = history.iter().any(|r| r.ema.is_some());
    let mut out = String::from("stage,epoch,lr,images_per_second,train_seconds");
    for b in &bits {
        let _ = write!(
            out,
            ",train_loss_{b},train_top1_{b},val_loss_{b},val_top1_{b},val_top5_{b}"
        );
        if ema {
            let _ = write!(out, ",ema_val_loss_{b},ema_val_top1_{b}");
        }
    }
    out.push('\n');
    for r in history {
        let _ = write!(
            out,
            "{},{},{},{},{}",
            r.stage, r.epoch, r.lr, r.images_per_second, r.train_seconds
        );
        for b in &bits {
            let train = r.train.get(*b);
            let val = r.val.get(*b);
            let cell = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
            let _ = write!(
                out,
                ",{},{},{},{},{}",
                cell(train.map(|s| s.loss)),
                cell(train.map(|s| s.top1)),
                cell(val.map(|s| s.loss)),
                cell(val.map(|s| s.top1)),
                cell(val.map(|s| s.top5)),
            );
            if ema {
                let e = r.ema.as_ref().and_then(|e| e.get(*b));
                let _ = write!(
                    out,
                    ",{},{}",
                    cell(e.map(|s| s.loss)),
                    cell(e.map(|s| s.top1))
                );
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::metrics::Scores;

    fn scores(loss: f64, top1: f64) -> Scores {
        Scores {
            loss,
            top1,
            top5: 90.0,
        }
    }

    #[test]
    fn one_row_per_epoch_and_the_bit_widths_highest_first() {
        let record = |stage: usize, bits: &[&str]| EpochRecord {
            ema: None,
            stage,
            epoch: 0,
            trained_bits: Vec::new(),
            lr: 0.1,
            train: bits
                .iter()
                .map(|b| (b.to_string(), scores(1.5, 40.0)))
                .collect::<BTreeMap<_, _>>(),
            val: bits
                .iter()
                .map(|b| (b.to_string(), scores(1.25, 50.0)))
                .collect(),
            images_per_second: 1000.0,
            train_seconds: 2.5,
        };
        let csv = metrics_csv(&[record(0, &["32"]), record(1, &["4", "2"])]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3, "{csv}");
        assert!(
            lines[0].starts_with(
                "stage,epoch,lr,images_per_second,train_seconds,train_loss_32,train_top1_32,val_loss_32,val_top1_32,val_top5_32,train_loss_4,"
            ),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with(",val_top5_2"), "{}", lines[0]);
        // The full-precision epoch has no 4- or 2-bit cells; the joint one no 32-bit cells.
        assert_eq!(lines[1], "0,0,0.1,1000,2.5,1.5,40,1.25,50,90,,,,,,,,,,");
        assert_eq!(
            lines[2],
            "1,0,0.1,1000,2.5,,,,,,1.5,40,1.25,50,90,1.5,40,1.25,50,90"
        );
        let columns = lines[0].split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == columns));
    }
}
