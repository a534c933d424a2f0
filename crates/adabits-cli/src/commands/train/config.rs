//! How `adabits train`'s flags make a configuration: the recipe, then the preset, then the
//! flags, then one check of every field; on `--resume`, the saved one with only the flags that
//! may change.

use adabits_models::BnSharing;
use adabits_train::data::DatasetKind;
use adabits_train::{RunDir, Schedule, ScheduleKind, Strategy, TrainConfig, TrainError};
use anyhow::Context;

use super::{Train, with_hint};

/// The resolved configuration of a new run: the recipe, then the preset, then the flags, then
/// one check of every field.
pub(crate) fn resolve(args: &Train) -> anyhow::Result<TrainConfig> {
    resolve_onto(args.recipe().config(), args, true)
}

/// The configuration of the run in `out` that `--resume` continues: its saved settings, with
/// the preset and flags given checked against them (only `max_steps` may change: the run goes
/// on to its end unless --max-steps is given again).
pub(super) fn resolve_resumed(args: &Train, out: &std::path::Path) -> anyhow::Result<TrainConfig> {
    let dir = RunDir::new(out);
    if !dir.is_run() {
        return Err(with_hint(TrainError::NoRun {
            path: out.to_path_buf(),
        }));
    }
    let saved = dir.read_config()?;
    // Through the type, so that a setting added since the run started compares at its default.
    let then = serde_json::to_value(&saved)?;
    let mut config = resolve_onto(saved, args, false)?;
    // A resumed run goes on to the end unless --max-steps stops it again.
    config.max_steps = args.max_steps;
    if let Some((field, there, here)) = config.first_difference(&then, &["max_steps"]) {
        anyhow::bail!(
            "{}: `{field}` is {there} there and {here} with the flags given: --resume continues a run with its saved settings (only --max-steps may change)\nhint: drop the flag or preset that sets `{field}`, or start a new run with another --out",
            dir.config_path().display()
        );
    }
    Ok(config)
}

/// `base` with the preset and the flags on top, then one check of every field; `fresh` for a
/// new run, whose full-precision stage the recipe sizes unless the preset or a flag does.
fn resolve_onto(base: TrainConfig, args: &Train, fresh: bool) -> anyhow::Result<TrainConfig> {
    let mut config = base;
    let mut preset_sets_fp_epochs = false;
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the preset", path.display()))?;
        let preset: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        anyhow::ensure!(
            preset.is_object(),
            "{}: expected a JSON object of configuration fields, found {}",
            path.display(),
            json_kind(&preset)
        );
        preset_sets_fp_epochs = preset.get("fp_epochs").is_some();
        config = config
            .with_preset(preset)
            .with_context(|| format!("{}: invalid configuration", path.display()))?;
    }
    let preset_epochs = config.epochs;
    set_model(args, &mut config);
    set_data(args, &mut config)?;
    set_strategy(args, &mut config)?;
    set_schedule(args, &mut config)?;
    let set = |flag: Option<usize>, field: &mut usize| {
        if let Some(v) = flag {
            *field = v;
        }
    };
    set(args.epochs, &mut config.epochs);
    if args.milestones.is_none() {
        scale_milestones(&mut config, preset_epochs);
    }
    set(args.batch_size, &mut config.batch_size);
    if let Some(n) = args.max_steps {
        config.max_steps = Some(n);
    }
    set(args.log_every, &mut config.log_every);
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if let Some(lr) = args.lr {
        config.optim.lr = lr;
    }
    if let Some(wd) = args.weight_decay {
        config.optim.weight_decay = wd;
    }
    if let Some(m) = args.momentum {
        config.optim.momentum = m;
    }
    if let Some(eps) = args.label_smoothing {
        config.label_smoothing = eps;
    }
    set(args.val_split, &mut config.val_split);
    if let Some(d) = args.ema_decay {
        config.ema_decay = Some(d);
    }
    if let Some(n) = args.nesterov {
        config.optim.nesterov = n;
    }
    if let Some(w) = args.warmup_epochs {
        config.optim.warmup_epochs = Some(w);
    }
    if let Some(norm) = args.clip_grad_norm {
        config.optim.clip_grad_norm = (norm != 0.0).then_some(norm);
    }
    if fresh && args.init.is_some() {
        config.init.clone_from(&args.init);
    }
    // The recipe's full-precision stage is as long as the training that follows it, unless
    // the preset or --fp-epochs says otherwise; a run started from weights (--init) has none.
    config.fp_epochs = match args.fp_epochs {
        Some(n) => n,
        None if preset_sets_fp_epochs || !fresh => config.fp_epochs,
        None if args.init.is_some() => 0,
        None => args.recipe().full_precision_epochs(config.epochs),
    };
    config.validate().map_err(|e| name_the_source(e, args))?;
    Ok(config)
}

/// Scales a multistep schedule's milestones, set for `before` epochs (by the preset or the
/// recipe), to the run's epochs when --epochs changed them, and says so: a preset's 100,150
/// kept for a 5-epoch run would never lower the rate. Milestones that land on or after the
/// last epoch are dropped.
fn scale_milestones(config: &mut TrainConfig, before: usize) {
    let after = config.epochs;
    let Schedule::MultiStep { milestones, .. } = &mut config.optim.schedule else {
        return;
    };
    if after == before || before == 0 || milestones.is_empty() {
        return;
    }
    let old = milestones.clone();
    let mut scaled: Vec<usize> = old
        .iter()
        .map(|m| (m * after / before).max(1))
        .filter(|&m| m < after)
        .collect();
    scaled.dedup();
    let list = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    eprintln!(
        "note: --epochs {after} changes the schedule's {before} epochs: its milestones {} scale to {}",
        list(&old),
        if scaled.is_empty() {
            "none (too few epochs for a drop)".to_string()
        } else {
            list(&scaled)
        }
    );
    *milestones = scaled;
}

/// A configuration error, naming the flag that set the bad value, or else the preset file.
fn name_the_source(err: TrainError, args: &Train) -> anyhow::Error {
    let TrainError::Config {
        field,
        expected,
        found,
    } = &err
    else {
        return err.into();
    };
    let flags: [(&str, &str, bool); 12] = [
        ("ema_decay", "--ema-decay", args.ema_decay.is_some()),
        ("val_split", "--val-split", args.val_split.is_some()),
        (
            "label_smoothing",
            "--label-smoothing",
            args.label_smoothing.is_some(),
        ),
        ("optim.momentum", "--momentum", args.momentum.is_some()),
        ("model.width_mult", "--width", args.width.is_some()),
        ("epochs", "--epochs", args.epochs.is_some()),
        ("batch_size", "--batch-size", args.batch_size.is_some()),
        ("optim.lr", "--lr", args.lr.is_some()),
        (
            "optim.weight_decay",
            "--weight-decay",
            args.weight_decay.is_some(),
        ),
        ("optim.schedule.gamma", "--gamma", args.gamma.is_some()),
        (
            "optim.clip_grad_norm",
            "--clip-grad-norm",
            args.clip_grad_norm.is_some(),
        ),
        ("model.bits", "--bits", args.bits.is_some()),
    ];
    if let Some((_, flag, _)) = flags.iter().find(|(f, _, given)| f == field && *given) {
        return anyhow::anyhow!("{flag} ({field}): expected {expected}, found {found}");
    }
    match &args.config {
        Some(path) => anyhow::anyhow!("{}: {err}", path.display()),
        None => err.into(),
    }
}

/// What kind of JSON value `v` is, for an error message.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn set_model(args: &Train, config: &mut TrainConfig) {
    let model = &mut config.model;
    if let Some(arch) = args.model {
        model.arch = arch;
    }
    if let Some(w) = args.width {
        model.width_mult = w;
    }
    if let Some(bits) = &args.bits {
        model.bits = bits.clone();
    }
    if args.shared_alpha {
        model.quant.switchable_alpha = false;
    }
    if args.shared_bn {
        model.quant.bn = BnSharing::Shared;
    }
    if let Some(s) = args.weight_scheme {
        model.quant.weight_scheme = s;
    }
    if let Some(s) = args.act_scheme {
        model.quant.act_scheme = s;
    }
}

/// `--dataset` starts a data section of its own (with `--data-dir`); `--data-dir` alone moves
/// the preset's folder.
fn set_data(args: &Train, config: &mut TrainConfig) -> anyhow::Result<()> {
    if let Some(kind) = args.dataset {
        config.data = match kind.source(args.data_dir.clone()) {
            Some(source) => source,
            None if kind == DatasetKind::Synthetic => anyhow::bail!(
                "--data-dir {} is given but the dataset is synthetic\nhint: add --dataset cifar10, cifar100 or imagefolder",
                args.data_dir
                    .as_ref()
                    .map_or(String::new(), |d| d.display().to_string())
            ),
            None => anyhow::bail!(
                "the dataset {} needs --data-dir DIR\nhint: or use --dataset synthetic, which needs no download",
                kind.name()
            ),
        };
    } else if let Some(dir) = &args.data_dir {
        match config.data.dir_mut() {
            Some(slot) => *slot = dir.clone(),
            None => anyhow::bail!(
                "--data-dir {} is given but the dataset is synthetic\nhint: add --dataset cifar10, cifar100 or imagefolder",
                dir.display()
            ),
        }
    }
    Ok(())
}

/// `--strategy` replaces the strategy; `--distill` and `--low-to-high` set the options of the
/// strategy that results, and are refused for one without them.
fn set_strategy(args: &Train, config: &mut TrainConfig) -> anyhow::Result<()> {
    if let Some(kind) = args.strategy {
        config.strategy = kind.strategy();
    }
    match &mut config.strategy {
        Strategy::Joint { distill } if args.distill => *distill = true,
        Strategy::Progressive { low_to_high } if args.low_to_high => *low_to_high = true,
        other if args.distill || args.low_to_high => anyhow::bail!(
            "{} applies to the {} strategy, and this run's is {}\nhint: add --strategy {}",
            if args.distill {
                "--distill"
            } else {
                "--low-to-high"
            },
            if args.distill { "joint" } else { "progressive" },
            other.name(),
            if args.distill { "joint" } else { "progressive" },
        ),
        _ => {}
    }
    Ok(())
}

/// `--schedule` replaces the schedule; `--milestones` and `--gamma` set the multistep one's.
fn set_schedule(args: &Train, config: &mut TrainConfig) -> anyhow::Result<()> {
    let schedule = &mut config.optim.schedule;
    match args.schedule {
        Some(ScheduleKind::Cosine) => *schedule = Schedule::Cosine,
        Some(ScheduleKind::Constant) => *schedule = Schedule::Constant,
        Some(ScheduleKind::MultiStep) => {
            let milestones = args.milestones.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "--schedule multistep needs --milestones\nhint: e.g. --milestones 100,150"
                )
            })?;
            *schedule = Schedule::MultiStep {
                milestones,
                gamma: args.gamma.unwrap_or(0.1),
            };
            return Ok(());
        }
        None => {}
    }
    match schedule {
        Schedule::MultiStep { milestones, gamma } => {
            if let Some(m) = &args.milestones {
                *milestones = m.clone();
            }
            if let Some(g) = args.gamma {
                *gamma = g;
            }
        }
        _ if args.milestones.is_some() || args.gamma.is_some() => anyhow::bail!(
            "--milestones and --gamma set the multistep schedule, and this run's is {}\nhint: add --schedule multistep",
            schedule.kind().name()
        ),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use adabits_models::Architecture;
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: Train,
    }

    fn resolved(flags: &[&str]) -> TrainConfig {
        let cli =
            Cli::try_parse_from(std::iter::once("train").chain(flags.iter().copied())).unwrap();
        resolve(&cli.train).unwrap()
    }

    #[test]
    fn the_recipe_sets_the_full_precision_stage_and_the_clip_and_flags_override_them() {
        let config = resolved(&["--epochs", "7"]);
        assert_eq!(config.fp_epochs, 7);
        assert_eq!(config.optim.clip_grad_norm, Some(5.0));
        assert_eq!(
            config.model.quant.depthwise_bita_min.map(|b| b.get()),
            Some(4)
        );
        let config = resolved(&["--epochs", "7", "--fp-epochs", "0", "--clip-grad-norm", "0"]);
        assert_eq!(config.fp_epochs, 0);
        assert_eq!(config.optim.clip_grad_norm, None);
        let config = resolved(&["--fp-epochs", "2", "--clip-grad-norm", "1.5"]);
        assert_eq!(config.fp_epochs, 2);
        assert_eq!(config.optim.clip_grad_norm, Some(1.5));
        // The official recipe has neither.
        let config = resolved(&["--recipe", "official", "--epochs", "7"]);
        assert_eq!(config.fp_epochs, 0);
        assert_eq!(config.optim.clip_grad_norm, None);
        assert_eq!(config.model.quant.depthwise_bita_min, None);
        let config = resolved(&["--warmup-epochs", "3"]);
        assert_eq!(config.optim.warmup_epochs, Some(3));
        let config = resolved(&["--momentum", "0.8", "--nesterov", "false"]);
        assert_eq!((config.optim.momentum, config.optim.nesterov), (0.8, false));
        assert!(resolved(&[]).optim.nesterov);
        let err = refused(&["--momentum", "1.5"]);
        assert!(err.contains("--momentum (optim.momentum)"), "{err}");
        assert_eq!(resolved(&["--val-split", "5000"]).val_split, 5000);
        assert_eq!(resolved(&["--ema-decay", "0.999"]).ema_decay, Some(0.999));
        assert_eq!(resolved(&[]).ema_decay, None);
        let err = refused(&["--ema-decay", "1"]);
        assert!(err.contains("--ema-decay (ema_decay)"), "{err}");
        assert_eq!(resolved(&[]).val_split, 0);
        assert_eq!(resolved(&["--label-smoothing", "0.1"]).label_smoothing, 0.1);
        assert_eq!(resolved(&[]).label_smoothing, 0.0);
        let err = refused(&["--label-smoothing", "1"]);
        assert!(err.contains("--label-smoothing (label_smoothing)"), "{err}");
    }

    #[test]
    fn shortening_a_presets_epochs_scales_its_milestones() {
        let preset = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/cifar10-resnet20.json"
        );
        let milestones = |flags: &[&str]| {
            let mut all = vec!["--config", preset];
            all.extend_from_slice(flags);
            match resolved(&all).optim.schedule {
                Schedule::MultiStep { milestones, .. } => milestones,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(milestones(&[]), [100, 150]);
        // 100,150 of 200 epochs: 5,7 of 10; none of 1 (no drop fits).
        assert_eq!(milestones(&["--epochs", "10"]), [5, 7]);
        assert_eq!(milestones(&["--epochs", "1"]), Vec::<usize>::new());
        // Given milestones are kept, and one past the last epoch is refused, named.
        assert_eq!(
            milestones(&["--epochs", "10", "--milestones", "2,8"]),
            [2, 8]
        );
        let err = refused(&["--config", preset, "--epochs", "10", "--milestones", "4,12"]);
        assert!(
            err.contains("--milestones") || err.contains("optim.schedule.milestones"),
            "{err}"
        );
        assert!(err.contains("found 12"), "{err}");
    }

    #[test]
    fn resume_reads_the_saved_settings_and_refuses_flags_that_change_them() {
        let out =
            std::env::temp_dir().join(format!("adabits-resume-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let saved = resolved(&["--epochs", "3", "--lr", "0.2", "--bits", "4,2"]);
        RunDir::new(&out).write_config(&saved).unwrap();
        let out_s = out.to_str().unwrap();
        let resumed = |flags: &[&str]| {
            let mut all = vec!["train", "--resume", "--out", out_s];
            all.extend_from_slice(flags);
            let cli = Cli::try_parse_from(all).unwrap();
            resolve_resumed(&cli.train, &out).map_err(|e| format!("{e:#}"))
        };
        // No flag: the saved settings, not the defaults.
        assert_eq!(resumed(&[]).unwrap(), saved);
        let mut stopped = saved.clone();
        stopped.max_steps = Some(2);
        RunDir::new(&out).write_config(&stopped).unwrap();
        assert_eq!(resumed(&[]).unwrap(), saved, "a step limit is not kept");
        // A flag that agrees, and --max-steps, which may change.
        assert_eq!(resumed(&["--lr", "0.2"]).unwrap(), saved);
        assert_eq!(resumed(&["--max-steps", "5"]).unwrap().max_steps, Some(5));
        let err = resumed(&["--lr", "0.05"]).unwrap_err();
        assert!(
            err.contains("config.json") && err.contains("`optim.lr` is 0.2 there and 0.05"),
            "{err}"
        );
        let err = resumed(&["--bits", "8,4"]).unwrap_err();
        assert!(err.contains("`model.bits`"), "{err}");
        // The recipe seeds a new run only.
        let err = Cli::try_parse_from(["train", "--resume", "--recipe", "official"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("--recipe") && err.contains("--resume"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&out);
    }

    fn refused(flags: &[&str]) -> String {
        let cli =
            Cli::try_parse_from(std::iter::once("train").chain(flags.iter().copied())).unwrap();
        format!("{:#}", resolve(&cli.train).unwrap_err())
    }

    #[test]
    fn flags_set_typed_fields_and_options_of_another_strategy_or_schedule_are_refused() {
        let config = resolved(&[
            "--model",
            "mobilenet_v2",
            "--bits",
            "4,2",
            "--strategy",
            "progressive",
            "--low-to-high",
            "--schedule",
            "multistep",
            "--milestones",
            "3,5",
            "--epochs",
            "8",
            "--dataset",
            "imagefolder",
            "--data-dir",
            "/data/in",
        ]);
        assert_eq!(config.model.arch, Architecture::MobileNetV2);
        assert_eq!(config.model.bits.to_string(), "4,2");
        assert_eq!(config.strategy, Strategy::Progressive { low_to_high: true });
        assert_eq!(
            config.optim.schedule,
            Schedule::MultiStep {
                milestones: vec![3, 5],
                gamma: 0.1
            }
        );
        assert_eq!(config.data.name(), "imagefolder");
        let err = refused(&["--strategy", "direct", "--distill"]);
        assert!(
            err.contains("--distill applies to the joint strategy"),
            "{err}"
        );
        let err = refused(&["--low-to-high"]);
        assert!(err.contains("this run's is joint"), "{err}");
        let err = refused(&["--milestones", "3"]);
        assert!(err.contains("this run's is cosine"), "{err}");
        let err = refused(&["--data-dir", "/data"]);
        assert!(err.contains("the dataset is synthetic"), "{err}");
        // The parser refuses a width that is not a number above 0; `validate` one below the
        // minimum, naming the flag and the field.
        assert!(
            Cli::try_parse_from(["train", "--width", "0"])
                .is_err_and(|e| e.to_string().contains("'--width <W>'"))
        );
        let err = refused(&["--width", "0.001"]);
        assert!(err.contains("--width (model.width_mult)"), "{err}");
    }
}
