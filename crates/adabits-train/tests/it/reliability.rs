//! What a careless or unlucky user does to a run: two writers, a run that died before its
//! first checkpoint, damaged checkpoint files, a learning rate that blows the loss up.

use std::path::{Path, PathBuf};

use adabits_models::{StateDict, StateTensor};
use adabits_train::{
    RunDir, RunOptions, RunResults, RunStatus, Strategy, TrainConfig, TrainError, Which, train,
};
use sha2::{Digest, Sha256};

use crate::train::{completed_run, history, temp_dir, tiny_config};

/// A tiny joint run: two epochs of 8 steps at {4,2}, no full-precision stage.
fn config() -> TrainConfig {
    tiny_config("4,2", Strategy::Joint { distill: false })
}

/// Runs `config` in `out`, resuming if asked, stopping at `max_steps`.
fn run(
    config: &TrainConfig,
    out: &Path,
    resume: bool,
    max_steps: Option<usize>,
) -> Result<RunResults, TrainError> {
    let mut config = config.clone();
    config.max_steps = max_steps;
    let mut options = RunOptions::new(out);
    options.resume = resume;
    train(
        config,
        &crate::device(),
        &options,
        &mut adabits_train::Quiet,
    )
}

/// The checkpoint folder a pointer names.
fn checkpoint(out: &Path, which: Which) -> PathBuf {
    RunDir::new(out).checkpoint_dir(which).unwrap()
}

/// Rewrites a checkpoint folder's `checksums.json` for its files as they are now: what a
/// damaged file that passed its checksum would look like.
fn reseal(dir: &Path) {
    let mut sums = serde_json::Map::new();
    for name in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        sums.insert(name.into(), hex.into());
    }
    let json = serde_json::json!({ "sha256": sums });
    std::fs::write(dir.join("checksums.json"), json.to_string()).unwrap();
}

#[test]
fn a_second_writer_is_refused_naming_the_holder() {
    let out = temp_dir("lock");
    let dir = RunDir::new(&out);
    let held = dir.lock().unwrap();
    let second = dir.lock().unwrap_err();
    let msg = second.to_string();
    let TrainError::Busy { pid, .. } = second else {
        panic!("{msg}");
    };
    assert_eq!(pid, Some(std::process::id()), "{msg}");
    assert!(
        msg.contains(&format!("in use by process {}", std::process::id())),
        "{msg}"
    );
    // A run into the locked folder is refused before it writes anything.
    let err = run(&config(), &out, false, Some(1)).unwrap_err();
    assert!(matches!(err, TrainError::Busy { .. }), "{err}");
    assert!(!dir.is_run());
    drop(held);
    run(&config(), &out, false, Some(1)).unwrap();
}

#[test]
fn a_run_that_died_before_its_first_checkpoint_resumes_from_its_start() {
    let config = config();
    let (_, whole) = completed_run(&config, "no-ckpt-whole", 16);
    let out = temp_dir("no-ckpt");
    run(&config, &out, false, Some(1)).unwrap();
    // What a kill before the first checkpoint leaves: the configuration, the logs, a
    // half-written folder and a pointer file's temporary.
    let checkpoints = out.join("checkpoints");
    std::fs::remove_dir_all(&checkpoints).unwrap();
    std::fs::create_dir_all(checkpoints.join(".s0-e0001-b00000-step8.tmp-99")).unwrap();
    std::fs::write(checkpoints.join(".pointers.json.tmp-99"), "{").unwrap();
    assert!(!RunDir::new(&out).has_checkpoint());
    // Without --resume the folder holds a run; with it, the run starts from the beginning.
    let again = run(&config, &out, false, None).unwrap_err();
    assert!(matches!(again, TrainError::RunExists { .. }), "{again}");
    let resumed = run(&config, &out, true, None).unwrap();
    assert_eq!((resumed.status, resumed.steps), (RunStatus::Completed, 16));
    assert_eq!(
        serde_json::to_value(&resumed.evaluations).unwrap(),
        serde_json::to_value(&whole.evaluations).unwrap()
    );
    assert_eq!(history(&out).len(), 2);
    // The temporaries are gone.
    let left: Vec<String> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A folder that holds no run cannot be resumed.
    let empty = temp_dir("no-run");
    let err = run(&config, &empty, true, None).unwrap_err();
    assert!(matches!(err, TrainError::NoRun { .. }), "{err}");
}

#[test]
fn damaged_checkpoint_files_are_refused_naming_the_file() {
    let config = config();
    let out = temp_dir("damaged");
    run(&config, &out, false, Some(3)).unwrap();
    let ckpt = checkpoint(&out, Which::Latest);
    let resume = || run(&config, &out, true, Some(3));
    let expect = |what: &str, needle: &str| {
        let err = resume().unwrap_err().to_string();
        assert!(err.contains(needle), "{what}: {err}");
    };
    // A bit flip in each file fails its checksum.
    for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        let path = ckpt.join(file);
        let original = std::fs::read(&path).unwrap();
        let mut flipped = original.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x10;
        std::fs::write(&path, &flipped).unwrap();
        expect(file, &format!("{file}: checksum mismatch"));
        // Emptied: momentum must not silently reset.
        std::fs::write(&path, b"").unwrap();
        expect(file, &format!("{file}: checksum mismatch"));
        std::fs::write(&path, &original).unwrap();
    }
    resume().unwrap();
    // No checksums at all.
    let sums = std::fs::read(ckpt.join("checksums.json")).unwrap();
    std::fs::remove_file(ckpt.join("checksums.json")).unwrap();
    expect("no checksums", "checksums.json: missing");
    std::fs::write(ckpt.join("checksums.json"), &sums).unwrap();
    // A momentum buffer of the wrong size, with checksums that match (no panic inside Burn).
    let optim = ckpt.join("optimizer.safetensors");
    let original = std::fs::read(&optim).unwrap();
    let mut dict = StateDict::read(&optim).unwrap();
    let key = dict.keys().next().unwrap().to_string();
    dict.insert(key.clone(), StateTensor::new(vec![3], vec![0.0; 3]));
    dict.write(&optim).unwrap();
    reseal(&ckpt);
    expect(
        "buffer shape",
        &format!("the momentum buffer `{key}`: expected"),
    );
    // A NaN in the model, sealed: named as the file's, not blamed on the gradient.
    std::fs::write(&optim, &original).unwrap();
    let model = ckpt.join("model.safetensors");
    let mut dict = StateDict::read(&model).unwrap();
    let key = dict.keys().next().unwrap().to_string();
    let mut tensor = dict.remove(&key).unwrap();
    tensor.values[0] = f32::NAN;
    dict.insert(key, tensor);
    dict.write(&model).unwrap();
    reseal(&ckpt);
    expect("NaN", "holds a NaN or an infinity");
    let err = RunDir::new(&out)
        .load(Which::Latest, &crate::device())
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds a NaN or an infinity"), "{err}");
}

#[test]
fn a_damaged_best_pointer_is_refused_before_it_can_delete_the_best_checkpoint() {
    let config = config();
    let out = temp_dir("best-pointer");
    // Two epochs: both pointers are set; stop inside the second epoch.
    run(&config, &out, false, Some(12)).unwrap();
    let best = checkpoint(&out, Which::Best);
    let pointers = out.join("checkpoints/pointers.json");
    let original = std::fs::read_to_string(&pointers).unwrap();
    let name = best.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(&pointers, original.replace(&name, "s0-e0000-b00001-step1")).unwrap();
    let err = run(&config, &out, true, None).unwrap_err().to_string();
    assert!(err.contains("pointers.json"), "{err}");
    assert!(best.is_dir(), "the best folder was deleted");
    std::fs::write(&pointers, original).unwrap();
    run(&config, &out, true, None).unwrap();
}

#[test]
fn a_loss_that_blows_up_stops_the_run_at_once() {
    let mut config = config();
    config.optim.lr = 1e4;
    config.optim.clip_grad_norm = None;
    let out = temp_dir("blow-up");
    let err = run(&config, &out, false, None).unwrap_err();
    let msg = err.to_string();
    let TrainError::Diverged {
        step,
        checkpoint,
        loss,
        limit,
        ..
    } = err
    else {
        panic!("{msg}");
    };
    assert!(loss > limit, "{msg}");
    // Within the first epoch: no checkpoint is promised.
    assert!(step < 8, "{msg}");
    assert_eq!(checkpoint, None, "{msg}");
    assert!(msg.contains("no checkpoint had been written yet"), "{msg}");
}

/// A generator for the mutation tests (xorshift64*).
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `bytes` with one random damage: a bit flipped, a byte replaced, deleted or inserted, the
/// tail cut off, or garbage appended.
fn mutate(bytes: &[u8], rand: &mut Rand) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let at = rand.below(out.len());
    match rand.below(6) {
        0 if !out.is_empty() => out[at] ^= 1 << rand.below(8),
        1 if !out.is_empty() => out[at] = rand.next() as u8,
        2 if !out.is_empty() => {
            out.remove(at);
        }
        3 => out.insert(at, rand.next() as u8),
        4 => out.truncate(at),
        _ => out.extend((0..1 + rand.below(16)).map(|_| rand.next() as u8)),
    }
    out
}

/// Whether a mutated file means what the original meant: the same bytes, or JSON files that
/// parse to the same value (whitespace, and the `max_steps` a resume may change).
fn equivalent(original: &[u8], mutated: &[u8]) -> bool {
    if original == mutated {
        return true;
    }
    let parse = |b: &[u8]| {
        let mut v = serde_json::from_slice::<serde_json::Value>(b).ok()?;
        if let Some(o) = v.as_object_mut() {
            o.remove("max_steps");
        }
        Some(v)
    };
    matches!((parse(original), parse(mutated)), (Some(a), Some(b)) if a == b)
}

/// Every file a resume reads, damaged one at a time: each must be refused with an error (or
/// mean what it meant before), never accepted changed and never a panic.
#[test]
fn mutated_run_files_are_refused_without_a_panic() {
    let cases: usize = std::env::var("ADABITS_MUTATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let config = config();
    let out = temp_dir("mutations");
    run(&config, &out, false, Some(12)).unwrap();
    let latest = checkpoint(&out, Which::Latest);
    let best = checkpoint(&out, Which::Best);
    let mut files = vec![
        out.join("config.json"),
        out.join("checkpoints/pointers.json"),
    ];
    for name in [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
        "checksums.json",
    ] {
        files.push(latest.join(name));
    }
    files.push(best.join("state.json"));
    files.push(best.join("checksums.json"));
    let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let mut rand = Rand(0x9E37_79B9_7F4A_7C15);
    let (mut refused, mut same, mut accepted, mut panics) = (0, 0, Vec::new(), Vec::new());
    let started = std::time::Instant::now();
    for case in 0..cases {
        let i = case % files.len();
        let mutated = mutate(&originals[i], &mut rand);
        std::fs::write(&files[i], &mutated).unwrap();
        let outcome =
            std::panic::catch_unwind(|| run(&config, &out, true, Some(12)).map(|r| r.steps));
        match outcome {
            Err(_) => panics.push((files[i].clone(), mutated.len())),
            Ok(Err(_)) => refused += 1,
            Ok(Ok(_)) if equivalent(&originals[i], &mutated) => same += 1,
            Ok(Ok(_)) => accepted.push(files[i].clone()),
        }
        std::fs::write(&files[i], &originals[i]).unwrap();
    }
    eprintln!(
        "{cases} mutated run files in {:.1} s: {refused} refused, {same} equivalent, {} accepted, {} panics",
        started.elapsed().as_secs_f64(),
        accepted.len(),
        panics.len()
    );
    assert!(panics.is_empty(), "panics: {panics:?}");
    assert!(accepted.is_empty(), "accepted damaged: {accepted:?}");
    // The run still resumes and completes.
    let done = run(&config, &out, true, None).unwrap();
    assert_eq!(done.status, RunStatus::Completed);
}

/// A run's `config.json` (what presets are made of) damaged thousands of times: parsing and
/// validating never panics. (A damaged configuration that still parses is a different
/// configuration, which a resume refuses: see the run-file mutations above.)
#[test]
fn mutated_configurations_never_panic() {
    let mut config = config();
    config.optim.clip_grad_norm = Some(5.0);
    let text = serde_json::to_vec_pretty(&config.resolve().unwrap()).unwrap();
    let mut rand = Rand(0xD1B5_4A32_D192_ED03);
    let (mut refused, mut parsed, mut panics) = (0, 0, 0);
    for _ in 0..3000 {
        let mutated = mutate(&text, &mut rand);
        let outcome = std::panic::catch_unwind(|| {
            serde_json::from_slice::<TrainConfig>(&mutated)
                .map_err(|e| e.to_string())
                .and_then(|c| c.resolve().map_err(|e| e.to_string()))
        });
        match outcome {
            Err(_) => panics += 1,
            Ok(Err(_)) => refused += 1,
            Ok(Ok(_)) => parsed += 1,
        }
    }
    eprintln!("3000 mutated configurations: {refused} refused, {parsed} valid, {panics} panics");
    assert_eq!(panics, 0);
}
