//! The optimiser: weight-decay groups, PyTorch's SGD arithmetic, the schedules.

use adabits_models::{Architecture, ModelConfig};
use adabits_train::{DecayGroups, LrPlan, OptimConfig, Schedule, Sgd};
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};

#[test]
fn weight_decay_goes_to_the_official_tensors() {
    let device = crate::device();
    let groups = |arch| {
        let model = ModelConfig::new(arch, "8,4".parse().unwrap())
            .with_width_mult(0.25)
            .init(&device);
        Sgd::decay_groups(&model)
    };
    // docs/method.md §7: 15 tensors with decay and 13 depthwise without (MobileNet-V1); 36 and 17
    // (MobileNet-V2).
    let v1 = groups(Architecture::MobileNetV1);
    assert_eq!((v1.decayed, v1.depthwise), (15, 13));
    let v2 = groups(Architecture::MobileNetV2);
    assert_eq!((v2.decayed, v2.depthwise), (36, 17));
    // ResNet-20: 19 convs, 2 projection convs and the classifier; the 21 BatchNorms (γ, β and
    // the two running statistics per bit-width), 22 α and the classifier bias have none.
    let r20: DecayGroups = groups(Architecture::CifarResNet(20));
    assert_eq!((r20.decayed, r20.depthwise), (22, 0));
    assert_eq!(r20.other, 21 * 2 * 4 + 22 + 1);
}

#[derive(Module, Debug)]
struct Tiny {
    linear: Param<Tensor<2>>,
    depthwise: Param<Tensor<4>>,
    bias: Param<Tensor<1>>,
}

fn tensor<const D: usize>(
    values: &[f32],
    shape: [usize; D],
    ad: &burn::tensor::Device,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), ad)
}

#[test]
fn sgd_matches_pytorch_nesterov_with_decay_on_weights_only() {
    let ad = crate::device().autodiff();
    let w0 = [0.5f32, -1.0, 2.0, 0.25];
    let dw0 = [1.0f32, -2.0];
    let b0 = [0.3f32];
    let mut model = Tiny {
        linear: Param::from_tensor(tensor(&w0, [2, 2], &ad)),
        depthwise: Param::from_tensor(tensor(&dw0, [2, 1, 1, 1], &ad)),
        bias: Param::from_tensor(tensor(&b0, [1], &ad)),
    };
    // Loss = Σ c·w: the gradients are the constants c.
    let (cw, cdw, cb) = ([1.0f32, 2.0, -1.0, 0.5], [0.25f32, -0.5], [2.0f32]);
    let (lr, mu, wd) = (0.1f64, 0.9f64, 0.01f64);
    let config = OptimConfig {
        lr,
        momentum: mu,
        nesterov: true,
        weight_decay: wd,
        ..OptimConfig::default()
    };
    let mut sgd = Sgd::new(config.clone());
    let step = |sgd: &mut Sgd, model: Tiny| {
        let loss = (model.linear.val() * tensor(&cw, [2, 2], &ad)).sum()
            + (model.depthwise.val() * tensor(&cdw, [2, 1, 1, 1], &ad)).sum()
            + (model.bias.val() * tensor(&cb, [1], &ad)).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        sgd.step(model, grads, lr)
    };
    for _ in 0..3 {
        model = step(&mut sgd, model);
    }
    // The same three steps in plain f64, as torch.optim.SGD(nesterov=True) computes them.
    let reference = |w: &[f32], g: &[f32], decay: bool| -> Vec<f64> {
        w.iter()
            .zip(g)
            .map(|(&w, &g)| {
                let (mut w, g, mut buf) = (f64::from(w), f64::from(g), None);
                for _ in 0..3 {
                    let d = g + if decay { wd * w } else { 0.0 };
                    let b = buf.map_or(d, |b: f64| mu * b + d);
                    buf = Some(b);
                    w -= lr * (d + mu * b);
                }
                w
            })
            .collect()
    };
    let read = |t: Tensor<2>| -> Vec<f64> { t.into_data().iter::<f64>().collect() };
    let close = |got: Vec<f64>, want: Vec<f64>| {
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    };
    close(read(model.linear.val()), reference(&w0, &cw, true));
    close(
        model.depthwise.val().into_data().iter::<f64>().collect(),
        reference(&dw0, &cdw, false),
    );
    close(
        model.bias.val().into_data().iter::<f64>().collect(),
        reference(&b0, &cb, false),
    );
    // The momentum buffers are saved by parameter, with their values, and restore to the same
    // next step; a fresh optimiser (no momentum yet) takes another one.
    let state = sgd.state();
    assert_eq!(state.len(), 3);
    let mut restored = Sgd::new(config.clone());
    restored.load_state(&state, &model, &ad).unwrap();
    let again = restored.state();
    assert_eq!(
        again.keys().collect::<Vec<_>>(),
        state.keys().collect::<Vec<_>>()
    );
    for key in state.keys() {
        assert_eq!(
            again.get(key).unwrap().values,
            state.get(key).unwrap().values,
            "{key}"
        );
    }
    let params = |m: &Tiny| -> Vec<f64> {
        let mut v: Vec<f64> = m.linear.val().into_data().iter::<f64>().collect();
        v.extend(m.depthwise.val().into_data().iter::<f64>());
        v.extend(m.bias.val().into_data().iter::<f64>());
        v
    };
    let continued = params(&step(&mut sgd, model.clone()));
    assert_eq!(params(&step(&mut restored, model.clone())), continued);
    assert_ne!(params(&step(&mut Sgd::new(config), model)), continued);
}

fn sgd_config(lr: f64, momentum: f64, weight_decay: f64) -> OptimConfig {
    OptimConfig {
        lr,
        momentum,
        weight_decay,
        ..OptimConfig::default()
    }
}

#[test]
fn the_schedules_follow_the_official_formulas() {
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    // Cosine, batch 128: no warm-up.
    let plan = LrPlan::new(&OptimConfig::default(), 128, 10, 100);
    close(plan.lr(0), 0.1);
    close(plan.lr(500), 0.05);
    assert!(plan.lr(999) < 1e-5);
    // Batch 512: lr × 2, 5 warm-up epochs from 256/512 of it.
    let plan = LrPlan::new(&OptimConfig::default(), 512, 10, 100);
    close(plan.lr(0), 0.2 * 0.5);
    close(plan.lr(250), 0.2 * (0.5 + 0.5 * 0.5));
    close(plan.lr(500), 0.2);
    close(plan.lr(750), 0.1);
    // Multistep at epochs 100 and 150 (the CIFAR recipe).
    let multistep = OptimConfig {
        schedule: Schedule::MultiStep {
            milestones: vec![100, 150],
            gamma: 0.1,
        },
        ..OptimConfig::default()
    };
    let plan = LrPlan::new(&multistep, 128, 200, 10);
    close(plan.lr(999), 0.1);
    close(plan.lr(1000), 0.01);
    close(plan.lr(1500), 0.001);
}

#[test]
fn a_gradient_longer_than_the_clip_is_scaled_down_to_it() {
    let ad = crate::device().autodiff();
    let (w0, dw0, b0) = ([0.5f32, -1.0, 2.0, 0.25], [1.0f32, -2.0], [0.3f32]);
    // Loss = Σ c·w: the gradients are the constants c, of global norm √10.5625 = 3.25.
    let (cw, cdw, cb) = ([1.0f32, 2.0, -1.0, 0.5], [0.25f32, -0.5], [2.0f32]);
    let step = |clip: Option<f64>| -> Vec<f64> {
        let model = Tiny {
            linear: Param::from_tensor(tensor(&w0, [2, 2], &ad)),
            depthwise: Param::from_tensor(tensor(&dw0, [2, 1, 1, 1], &ad)),
            bias: Param::from_tensor(tensor(&b0, [1], &ad)),
        };
        let loss = (model.linear.val() * tensor(&cw, [2, 2], &ad)).sum()
            + (model.depthwise.val() * tensor(&cdw, [2, 1, 1, 1], &ad)).sum()
            + (model.bias.val() * tensor(&cb, [1], &ad)).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        assert!((adabits_train::grad_norm(&model, &grads) - 3.25).abs() < 1e-6);
        let mut sgd = Sgd::new(OptimConfig {
            clip_grad_norm: clip,
            ..sgd_config(1.0, 0.0, 0.0)
        });
        let model = sgd.step(model, grads, 1.0);
        let mut out: Vec<f64> = model.linear.val().into_data().iter::<f64>().collect();
        out.extend(model.depthwise.val().into_data().iter::<f64>());
        out.extend(model.bias.val().into_data().iter::<f64>());
        out
    };
    let expected = |factor: f64| -> Vec<f64> {
        w0.iter()
            .chain(&dw0)
            .chain(&b0)
            .zip(cw.iter().chain(&cdw).chain(&cb))
            .map(|(&w, &c)| f64::from(w) - factor * f64::from(c))
            .collect()
    };
    let close = |got: Vec<f64>, want: Vec<f64>| {
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    };
    // Clipped to 1.3: every gradient × 1.3/3.25 = 0.4.
    close(step(Some(1.3)), expected(0.4));
    // A clip above the norm, and no clip, leave the gradient alone.
    close(step(Some(5.0)), expected(1.0));
    close(step(None), expected(1.0));
}
