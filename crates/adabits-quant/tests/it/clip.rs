//! Switchable clipping levels (S-CL) and the shared-α ablation.

use crate::bw;
use adabits_quant::{
    ActQuantConfig, BitWidth, BitWidths, CONV_ALPHA_INIT, ClippingLevelsConfig, LINEAR_ALPHA_INIT,
    pact,
};
use burn::tensor::{Distribution, Tensor};

fn bits() -> BitWidths {
    "8,6,5,4".parse().unwrap()
}

#[test]
fn official_initial_values() {
    assert_eq!(CONV_ALPHA_INIT, 8.0);
    assert_eq!(LINEAR_ALPHA_INIT, 10.0);
}

#[test]
fn switchable_levels_hold_one_alpha_per_bit_width() {
    let levels = ClippingLevelsConfig::new(bits(), CONV_ALPHA_INIT).init(&crate::device());
    assert!(levels.is_switchable());
    assert_eq!(crate::values(levels.alpha.val()), [8.0; 4]);
    assert_eq!(levels.index(bw(8)), 0);
    assert_eq!(levels.index(bw(5)), 2);
    assert_eq!(levels.index(bw(4)), 3);
    // Absent bit-widths (full precision, or one not trained) fall back to the first entry.
    assert_eq!(levels.index(bw(3)), 0);
    assert_eq!(levels.index(BitWidth::FULL), 0);
}

#[test]
fn shared_levels_hold_one_alpha() {
    let levels = ClippingLevelsConfig::new(bits(), LINEAR_ALPHA_INIT)
        .with_switchable(false)
        .init(&crate::device());
    assert!(!levels.is_switchable());
    assert_eq!(crate::values(levels.alpha.val()), [10.0]);
    for b in bits().iter().map(|p| p.weight) {
        assert_eq!(levels.index(b), 0);
        assert_eq!(levels.select(b).dims(), [1]);
    }
}

#[test]
fn only_the_active_entry_gets_gradient() {
    let device = crate::device().autodiff();
    let levels = ClippingLevelsConfig::new(bits(), 2.0).init(&device);
    device.seed(3);
    let x = Tensor::<2>::random([8, 16], Distribution::Normal(1.0, 2.0), &device);
    for (i, b) in bits().iter().map(|p| p.weight).enumerate() {
        let y = pact(x.clone(), levels.select(b), b, &ActQuantConfig::new());
        let grads = y.sum().backward();
        let g = crate::values(levels.alpha.val().grad(&grads).expect("α gets a gradient"));
        for (j, v) in g.iter().enumerate() {
            if j == i {
                assert!(
                    *v != 0.0,
                    "{b} bits: the active entry {j} got no gradient: {g:?}"
                );
            } else {
                assert_eq!(*v, 0.0, "{b} bits: entry {j} got gradient {v}: {g:?}");
            }
        }
    }
}
