//! Runs a training configuration given as JSON and prints every epoch's metrics:
//! `cargo run --release -p adabits-train --example run_config -- config.json OUT_DIR`.

use adabits_train::{EpochRecord, Progress, RunOptions, TrainConfig, train};

struct Print;

impl Progress for Print {
    fn epoch_end(&mut self, r: &EpochRecord) {
        let val: Vec<String> = r
            .val
            .iter()
            .map(|(b, s)| format!("{b}b {:.1}% ({:.3})", s.top1, s.loss))
            .collect();
        let train: Vec<String> = r
            .train
            .iter()
            .map(|(b, s)| format!("{b}b {:.1}% ({:.3})", s.top1, s.loss))
            .collect();
        println!(
            "stage {} epoch {}: lr {:.4} | train {} | val {} | {:.0} img/s",
            r.stage,
            r.epoch,
            r.lr,
            train.join(", "),
            val.join(", "),
            r.images_per_second
        );
    }

    fn note(&mut self, message: &str) {
        println!("{message}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let config: TrainConfig =
        serde_json::from_str(&std::fs::read_to_string(&args[1]).unwrap()).unwrap();
    let device = burn::tensor::Device::flex();
    let results = train(config, &device, &RunOptions::new(&args[2]), &mut Print).unwrap();
    println!("{}", serde_json::to_string(&results.evaluations).unwrap());
}
