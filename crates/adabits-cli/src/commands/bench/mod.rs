//! `adabits bench`: throughput of the fake-quant operators and of a quantized conv layer's
//! training step, on one device; with `--artifact`, the integer runtime against the `f32`
//! evaluation of an exported model (`artifact.rs`).

mod artifact;

use std::process::ExitCode;
use std::time::Instant;

use adabits_models::ModelConfig;
use adabits_quant::{
    ActQuantConfig, At, BitWidth, WeightQuantConfig, conv_fan_out, conv2d, pact, quantize_weight,
};
use adabits_train::data::Batch;
use adabits_train::{OptimConfig, Sgd, joint_step};
use burn::module::Module;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use clap::Args;

use crate::device::DeviceArg;
use crate::output::print_json;

/// The flags of `adabits bench`.
#[derive(Debug, Args)]
pub(crate) struct Bench {
    /// The device to run on (one of the backends compiled into this binary).
    #[arg(long, value_enum, default_value_t = DeviceArg::default())]
    device: DeviceArg,
    /// The bit-widths, as everywhere else: the operator workloads run at each, and --model
    /// trains jointly at all of them [default: 4, or 8,6,5,4 with --model] (`--list` is an
    /// older name).
    #[arg(long, value_name = "LIST", alias = "list")]
    bits: Option<adabits_quant::BitWidths>,
    /// The batch size of the activation workloads.
    #[arg(long, default_value_t = 32, value_parser = crate::values::count)]
    batch: usize,
    /// Timed iterations per workload (the median is reported).
    #[arg(long, default_value_t = 20, value_parser = crate::values::count)]
    iters: usize,
    /// Also time a training step and evaluation of this model (e.g. resnet20).
    #[arg(long)]
    model: Option<adabits_models::Architecture>,
    /// The model's width multiplier.
    #[arg(long, default_value_t = 1.0, value_parser = crate::values::positive)]
    width: f64,
    /// The model's input side [default: 32 for CIFAR ResNets, 224 otherwise].
    #[arg(long, value_parser = crate::values::input_side)]
    input: Option<usize>,
    /// Time the integer runtime and the `f32` evaluation of this artifact (`.abq`) instead, at
    /// every bit-width, at batch 1 and `--batch`.
    #[arg(long, value_name = "FILE")]
    artifact: Option<std::path::PathBuf>,
    /// Time the integer runtime's bit-serial products (AND and popcount over bit-planes)
    /// against its `u8 × i8` kernel at small bit-widths, one thread, and print where each wins.
    #[arg(long, conflicts_with_all = ["artifact", "model"])]
    crossover: bool,
    /// With --artifact: time each layer of the integer runtime instead (per image, over
    /// --batch images run one after another).
    #[arg(long, requires = "artifact")]
    profile: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `adabits bench`.
pub(crate) fn run(args: Bench) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.iters > 0, "--iters must be at least 1");
    let device = args.device.device();
    if args.crossover {
        let pairs = [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 3), (4, 4)];
        // 3×3 convolutions of 16, 64 and 512 channels (the CIFAR ResNets' first and last
        // stages, ResNet-18's last), and the depths around the runtime's threshold.
        let depths = [144, 576, 1024, 1536, 4608];
        let rows = adabits_runtime::crossover(&pairs, &depths);
        let isa = adabits_runtime::Isa::best();
        if args.json {
            let rows: Vec<_> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "k": r.k, "activation_bits": r.a_bits, "weight_bits": r.w_bits,
                        "bit_serial_gmacs": r.bit_serial_gmacs, "bytes_gmacs": r.bytes_gmacs,
                    })
                })
                .collect();
            print_json(&serde_json::json!({ "bytes_isa": isa.name(), "crossover": rows }))?;
        } else {
            println!("one thread, in cache; u8×i8 kernel: {}", isa.name());
            println!(
                "{:>6} {:>6} {:>6} {:>17} {:>12} {:>8}",
                "k", "a bits", "w bits", "bit-serial GMAC/s", "u8×i8 GMAC/s", "faster"
            );
            for r in &rows {
                let faster = if r.bit_serial_gmacs > r.bytes_gmacs {
                    "bits"
                } else {
                    "bytes"
                };
                println!(
                    "{:>6} {:>6} {:>6} {:>17.1} {:>12.1} {:>8}",
                    r.k, r.a_bits, r.w_bits, r.bit_serial_gmacs, r.bytes_gmacs, faster
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let (Some(path), true) = (&args.artifact, args.profile) {
        let rows = artifact::profile(path, args.batch)?;
        let isa = adabits_runtime::Isa::detect();
        let kernel = isa.kernel_gmacs();
        let threads = rayon::current_num_threads();
        if args.json {
            print_json(&serde_json::json!({
                "artifact": path.display().to_string(),
                "isa": isa.name(),
                "threads": threads,
                "kernel_gmacs_per_thread": kernel,
                "profile": rows,
            }))?;
        } else {
            println!(
                "{}: {} kernel in cache {kernel:.1} GMAC/s per thread, {threads} threads",
                path.display(),
                isa.name()
            );
            println!(
                "{:>5} {:<36} {:>10} {:>12} {:>9}",
                "bits", "node", "ms/image", "MACs", "GMAC/s"
            );
            for r in &rows {
                println!(
                    "{:>5} {:<36} {:>10.4} {:>12} {:>9.1}",
                    r.bits, r.node, r.ms, r.macs, r.gmacs
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(path) = &args.artifact {
        let (rows, isa) = artifact::engines(path, &device, args.batch, args.iters)?;
        let threads = rayon::current_num_threads();
        if args.json {
            print_json(&serde_json::json!({
                "artifact": path.display().to_string(),
                "device": args.device.to_string(),
                "isa": isa,
                "threads": threads,
                "results": rows,
            }))?;
        } else {
            println!(
                "{}: int kernels {isa}, f32 on {}, {threads} threads",
                path.display(),
                args.device
            );
            println!(
                "{:>6} {:>9} {:>5} {:>6} {:>10} {:>11} {:>13} {:>8}",
                "engine",
                "residency",
                "bits",
                "batch",
                "median ms",
                "images/s",
                "weight bytes",
                "f32/int"
            );
            // Per bit-width and batch: the integer runtime packed, expanded, then f32.
            for group in rows.chunks(3) {
                let f32_ms = group[2].ms;
                for r in group {
                    let ratio = if r.engine == "int" {
                        format!("{:.2}×", f32_ms / r.ms)
                    } else {
                        String::new()
                    };
                    println!(
                        "{:>6} {:>9} {:>5} {:>6} {:>10.3} {:>11.1} {:>13} {:>8}",
                        r.engine,
                        r.residency.unwrap_or("–"),
                        r.bits,
                        r.batch,
                        r.ms,
                        r.throughput,
                        r.weight_bytes,
                        ratio
                    );
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let default = if args.model.is_some() { "8,6,5,4" } else { "4" };
    let bits = match &args.bits {
        Some(bits) => bits.clone(),
        None => default.parse()?,
    };
    let mut results = vec![memory_copy(args.batch * 64 * 32 * 32, args.iters)];
    // The operators at every bit-width an entry uses, for weights or activations.
    let mut widths: Vec<BitWidth> = Vec::new();
    for b in bits.iter().flat_map(|p| [p.weight, p.activation]) {
        if !widths.contains(&b) {
            widths.push(b);
        }
    }
    for b in widths {
        results.extend(operators(&device, b, args.batch, args.iters)?);
    }
    if let Some(arch) = args.model {
        let config = ModelConfig::new(arch, bits).with_width_mult(args.width);
        let side = args.input.unwrap_or(arch.default_input_size());
        results.extend(model_workloads(
            &device, &config, args.batch, side, args.iters,
        )?);
    }
    if args.json {
        print_json(&serde_json::json!({
            "device": args.device.to_string(),
            "threads": rayon::current_num_threads(),
            "results": results,
        }))?;
    } else {
        println!("device: {}", args.device);
        println!(
            "{:<52} {:>10} {:>14}",
            "workload", "median ms", "throughput"
        );
        for m in &results {
            println!(
                "{:<52} {:>10.3} {:>9.1} {}",
                m.name, m.ms, m.throughput, m.unit
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One measured workload.
#[derive(Debug, serde::Serialize)]
struct Measurement {
    /// What was timed.
    name: String,
    /// Median milliseconds per iteration.
    ms: f64,
    /// A throughput figure for the workload.
    throughput: f64,
    /// Its unit.
    unit: &'static str,
}

impl Measurement {
    /// A memory-bound workload that moved `bytes` in `ms` milliseconds, in GB/s.
    fn bandwidth(name: String, bytes: f64, ms: f64) -> Self {
        Self {
            name,
            ms,
            throughput: bytes / (ms * 1e-3) / 1e9,
            unit: "GB/s",
        }
    }
}

/// Times `f` `iters` times after `warmup` untimed runs, synchronising the device inside the timed
/// region (GPU work is asynchronous), and returns the median in milliseconds.
fn time_ms(
    device: &Device,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut(),
) -> anyhow::Result<f64> {
    for _ in 0..warmup {
        f();
    }
    device
        .sync()
        .map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"))?;
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f();
        device
            .sync()
            .map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"))?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// Runs the operator workloads at `bits` on `device`.
fn operators(
    device: &Device,
    bits: BitWidth,
    batch: usize,
    iters: usize,
) -> anyhow::Result<Vec<Measurement>> {
    let mut out = Vec::new();
    device.seed(0);

    // 1. PACT on an activation tensor: bytes read + written per second.
    let x = Tensor::<4>::random([batch, 64, 32, 32], Distribution::Normal(0.0, 4.0), device);
    let alpha = Tensor::<1>::full([1], 8.0, device);
    let act = ActQuantConfig::new();
    let elems = x.shape().num_elements() as f64;
    let ms = time_ms(device, 3, iters, || {
        let _ = pact(x.clone(), alpha.clone(), bits, &act);
    })?;
    out.push(Measurement::bandwidth(
        format!("pact forward [{batch},64,32,32] @{bits}b"),
        elems * 8.0,
        ms,
    ));

    // 1b. PACT forward and backward (the input and clipping-level gradients), as in training:
    //     bytes counted are the forward's read and write and the backward's reads of x and
    //     the incoming gradient and write of ∂x (20 per element).
    let ad = device.clone().autodiff();
    let xg = Tensor::<4>::random([batch, 64, 32, 32], Distribution::Normal(0.0, 4.0), &ad)
        .require_grad();
    let alpha_g = Tensor::<1>::full([1], 8.0, &ad).require_grad();
    let upstream = Tensor::<4>::random([batch, 64, 32, 32], Distribution::Normal(0.0, 1.0), &ad);
    let ms = time_ms(device, 2, iters, || {
        let y = pact(xg.clone(), alpha_g.clone(), bits, &act);
        let grads = (y * upstream.clone()).sum().backward();
        let _ = xg.grad(&grads);
    })?;
    out.push(Measurement::bandwidth(
        format!("pact fwd+bwd [{batch},64,32,32] @{bits}b"),
        elems * 20.0,
        ms,
    ));

    // 2. Weight quantization of a 3x3 conv weight.
    let w = Tensor::<4>::random([256, 256, 3, 3], Distribution::Normal(0.0, 0.05), device);
    let wq = WeightQuantConfig::new();
    let fan_out = conv_fan_out(w.dims());
    let welems = w.shape().num_elements() as f64;
    let ms = time_ms(device, 3, iters, || {
        let _ = quantize_weight(w.clone(), bits, fan_out, &wq).effective();
    })?;
    out.push(Measurement::bandwidth(
        format!("weight quant [256,256,3,3] @{bits}b"),
        welems * 8.0,
        ms,
    ));

    // 3. A quantized 3x3 conv layer (ResNet-20 stage 1: 16→16 channels, 32x32), forward and
    //    backward, as in one bit-width's pass of a training step.
    let ad = device.clone().autodiff();
    let x = Tensor::<4>::random([batch, 16, 32, 32], Distribution::Normal(0.0, 2.0), &ad);
    let w = Tensor::<4>::random([16, 16, 3, 3], Distribution::Normal(0.0, 0.1), &ad).require_grad();
    let alpha = Tensor::<1>::full([1], 8.0, &ad).require_grad();
    let options = ConvOptions {
        stride: [1, 1],
        padding: [(1, 1), (1, 1)],
        dilation: [1, 1],
        groups: 1,
    };
    let wq = WeightQuantConfig::new().with_rescale(false);
    let fan_out = conv_fan_out(w.dims());
    let ms = time_ms(device, 2, iters, || {
        let xq = pact(x.clone(), alpha.clone(), bits, &act);
        let weff = quantize_weight(w.clone(), bits, fan_out, &wq).effective();
        let y = conv2d(xq, weff, None, options.clone());
        let grads = y.sum().backward();
        let _ = w.grad(&grads);
    })?;
    out.push(Measurement {
        name: format!("qconv3x3 16→16 32x32 fwd+bwd, batch {batch} @{bits}b"),
        ms,
        throughput: batch as f64 / (ms * 1e-3),
        unit: "img/s",
    });
    Ok(out)
}

/// The host's memory-copy bandwidth on a buffer the size of the PACT workload's input, copied
/// by every rayon thread in parallel (GB/s counts bytes read and written, as the quantizer
/// workloads do): the yardstick for the fused quantizers' bandwidth.
fn memory_copy(elems: usize, iters: usize) -> Measurement {
    use rayon::prelude::*;
    let src = vec![1.0f32; elems];
    let mut dst = vec![0.0f32; elems];
    let mut samples: Vec<f64> = (0..iters + 2)
        .map(|_| {
            let start = Instant::now();
            dst.par_chunks_mut(1 << 16)
                .zip(src.par_chunks(1 << 16))
                .for_each(|(d, s)| d.copy_from_slice(s));
            start.elapsed().as_secs_f64() * 1e3
        })
        .skip(2)
        .collect();
    samples.sort_by(f64::total_cmp);
    let ms = samples[samples.len() / 2];
    Measurement::bandwidth(
        format!("host memory copy [{:.1} MB]", elems as f64 * 4.0 / 1e6),
        elems as f64 * 8.0,
        ms,
    )
}

/// The model workloads: one joint training step over `list` (each image counted once per
/// step, whatever the number of bit-widths) and an evaluation forward pass at each bit-width.
fn model_workloads(
    device: &Device,
    config: &ModelConfig,
    batch: usize,
    side: usize,
    iters: usize,
) -> anyhow::Result<Vec<Measurement>> {
    anyhow::ensure!(batch >= 2, "--batch must be at least 2 for a training step");
    let ad = device.clone().autodiff();
    ad.seed(0);
    let mut model = config.init(&ad);
    let mut sgd = Sgd::new(OptimConfig::default());
    let images = Tensor::<4>::random([batch, 3, side, side], Distribution::Uniform(0.0, 1.0), &ad);
    let labels: Vec<i64> = (0..batch)
        .map(|i| (i % config.num_classes) as i64)
        .collect();
    let batch_data = Batch {
        images,
        labels: Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &ad),
        targets: (0..batch).map(|i| i % config.num_classes).collect(),
    };
    let bits: Vec<At> = config.bits.entries().collect();
    let name = format!("{} ×{} {}", config.arch, config.width_mult, config.bits);
    let mut failure = None;
    let ms = time_ms(device, 1, iters, || {
        let stepped = joint_step(
            model.clone(),
            &mut sgd,
            &bits,
            &batch_data,
            0.01,
            adabits_train::Objective::default(),
            &mut |_, _, _| Ok(()),
        );
        match stepped {
            Ok(m) => model = m,
            Err(e) => failure = Some(e),
        }
    })?;
    if let Some(e) = failure {
        anyhow::bail!("training step failed: {e}");
    }
    let mut out = vec![Measurement {
        name: format!("train step {name}, batch {batch}, {side}x{side}"),
        ms,
        throughput: batch as f64 / (ms * 1e-3),
        unit: "img/s",
    }];
    let eval = model.valid();
    let images = batch_data.images.clone().inner();
    for &at in &bits {
        let ms = time_ms(device, 1, iters, || {
            let _ = eval.forward_at(images.clone(), at).into_data();
        })?;
        let b = match at.precision.as_uniform() {
            Some(b) => format!("{b}b"),
            None => at.precision.to_string(),
        };
        out.push(Measurement {
            name: format!("eval forward {name} @{b}, batch {batch}"),
            ms,
            throughput: batch as f64 / (ms * 1e-3),
            unit: "img/s",
        });
    }
    Ok(out)
}
