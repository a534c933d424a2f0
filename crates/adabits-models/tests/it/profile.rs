//! The cost profiler against the official profiler's figures (docs/method.md §10.3).

use adabits_models::{Accounting, CifarResNetConfig, cost};
use adabits_quant::{BitWidth, BitWidths};

/// `value` printed with `decimals` decimals equals `printed`.
fn prints_as(value: f64, decimals: usize, printed: &str) -> bool {
    format!("{value:.decimals$}") == printed
}

/// `megabytes` rounded to 4 decimals and then, half up, to 3 prints as `printed`.
///
/// The specification's MB column was rounded twice: MobileNet-V1 comes to exactly 3,417,480 bytes at
/// 6 bits and 3,019,452 at 5 (weights·bits/8 + 4 B per bias and α entry), printed there as 3.418
/// and 3.020, which is 3.4175 and 3.0195 rounded again. Rounding once would print 3.417 and
/// 3.019. Every other figure of the table reads the same either way; this rule reproduces all of
/// them, so that is how the table is compared.
fn prints_as_mb(megabytes: f64, printed: &str) -> bool {
    let four_decimals = (megabytes * 1e4).round() as u64;
    let thousandths = (four_decimals + 5) / 10;
    format!("{}.{:03}", thousandths / 1000, thousandths % 1000) == printed
}

/// Asserts the official profiler's totals: exact MACs and parameters at every bit-width, and
/// GBitOPs and MB as printed (`(bits, GBitOPs, MB)` rows; the MB column has 3 decimals).
fn assert_official_profile(
    shapes: &[adabits_models::LayerShape],
    macs: u64,
    params: u64,
    expected: &[(u8, &str, &str)],
) {
    for &(b, gbitops, mb) in expected {
        let report = cost(shapes, BitWidth::new(b).unwrap(), Accounting::Official);
        assert_eq!(report.macs, macs, "{b} bits");
        assert_eq!(report.params, params, "{b} bits");
        let decimals = gbitops.split('.').nth(1).map_or(0, str::len);
        assert!(
            prints_as(report.gbitops, decimals, gbitops),
            "{b} bits: {} GBitOPs, official {gbitops}",
            report.gbitops
        );
        assert!(
            prints_as_mb(report.size_mb, mb),
            "{b} bits: {} MB, official {mb}",
            report.size_mb
        );
    }
}

#[test]
fn resnet20_matches_the_official_profiler() {
    let bits: BitWidths = "5,4,3".parse().unwrap();
    let model = CifarResNetConfig::new(20, bits).init(&crate::device());
    let shapes = model.layer_shapes([32, 32]);
    let expected = [
        (5, "1.084", "0.170"),
        (4, "0.721", "0.136"),
        (3, "0.438", "0.102"),
        (32, "41.80", "1.084"),
    ];
    assert_official_profile(&shapes, 40_817_280, 270_906, &expected);
}

#[test]
fn the_paper_accounting_counts_the_first_layer_at_full_precision() {
    let bits: BitWidths = "5,4,3".parse().unwrap();
    let model = CifarResNetConfig::new(20, bits).init(&crate::device());
    let shapes = model.layer_shapes([32, 32]);
    let b = BitWidth::new(4).unwrap();
    let official = cost(&shapes, b, Accounting::Official);
    let paper = cost(&shapes, b, Accounting::PaperFirstLayerFullPrecision);
    let stem = &official.layers[0];
    assert_eq!(
        (stem.bitw, stem.bita),
        (5, 32),
        "weight-only stem at max(bits)"
    );
    assert_eq!((paper.layers[0].bitw, paper.layers[0].bita), (32, 32));
    let diff = (paper.gbitops - official.gbitops) * 1e9;
    assert!(
        (diff - stem.macs as f64 * (32.0 * 32.0 - 5.0 * 32.0)).abs() < 1.0,
        "{diff}"
    );
}

#[test]
fn mobilenet_v1_matches_the_official_profiler() {
    use adabits_models::MobileNetV1Config;
    let bits: BitWidths = "8,6,5,4".parse().unwrap();
    let model = MobileNetV1Config::new(bits).init(&crate::device());
    let shapes = model.layer_shapes([224, 224]);
    assert_eq!(
        shapes
            .iter()
            .filter(|s| s.kind != adabits_models::OpKind::AvgPool)
            .count(),
        28
    );
    let expected = [
        (8, "38.53", "4.214"),
        (6, "22.92", "3.418"),
        (5, "16.79", "3.020"),
        (4, "11.77", "2.621"),
        (32, "582.44", "16.841"),
    ];
    assert_official_profile(&shapes, 568_790_528, 4_210_088, &expected);
    for (b, bytes) in [(6, 3_417_480), (5, 3_019_452)] {
        let report = cost(&shapes, BitWidth::new(b).unwrap(), Accounting::Official);
        assert_eq!(report.size_bytes, bytes, "{b} bits");
        assert_eq!(report.size_mb, bytes as f64 / 1e6, "{b} bits");
    }
}

#[test]
fn mobilenet_v2_matches_the_official_profiler() {
    use adabits_models::MobileNetV2Config;
    let bits: BitWidths = "8,6,5,4".parse().unwrap();
    let model = MobileNetV2Config::new(bits).init(&crate::device());
    let shapes = model.layer_shapes([224, 224]);
    let expected = [
        (8, "21.39", "3.475"),
        (6, "13.29", "2.927"),
        (5, "10.11", "2.654"),
        (4, "7.50", "2.380"),
        (32, "308.06", "13.884"),
    ];
    assert_official_profile(&shapes, 300_836_992, 3_470_760, &expected);
    // The paper's motivating ratio (docs/method.md §10.2): 14.25× fewer BitOPs at 6 bits than at 32
    // when the first layer is counted at 32×32 bits.
    let paper = |b| {
        cost(
            &shapes,
            BitWidth::new(b).unwrap(),
            Accounting::PaperFirstLayerFullPrecision,
        )
        .gbitops
    };
    assert!(
        prints_as(paper(32) / paper(6), 2, "14.25"),
        "{}",
        paper(32) / paper(6)
    );
}

#[test]
fn imagenet_resnet_macs_match_the_commonly_reported_figures() {
    // Convolutions and the classifier of torchvision's ResNet-18 and ResNet-50 at 224×224 are
    // commonly reported as 1.81 and 4.09 GMACs; the max pool has no counting rule, and the
    // average pool adds C·7·7.
    use adabits_models::{ImageNetResNetConfig, OpKind};
    let bits: BitWidths = "8".parse().unwrap();
    for (depth, gmacs) in [(18, "1.81"), (50, "4.09")] {
        let model = ImageNetResNetConfig::new(depth, bits.clone()).init(&crate::device());
        let shapes = model.layer_shapes([224, 224]);
        let report = cost(&shapes, BitWidth::new(8).unwrap(), Accounting::Official);
        let pool: u64 = shapes
            .iter()
            .filter(|s| s.kind == OpKind::AvgPool)
            .map(|s| s.macs)
            .sum();
        let macs = (report.macs - pool) as f64 * 1e-9;
        assert!(prints_as(macs, 2, gmacs), "ResNet-{depth}: {macs} GMACs");
    }
}

#[test]
fn a_floor_on_depthwise_inputs_shows_in_every_depthwise_row_and_nowhere_else() {
    use adabits_models::{MobileNetV1Config, MobileNetV2Config, QuantSettings};
    let bits: BitWidths = "4,3,2".parse().unwrap();
    let four = BitWidth::new(4).unwrap();
    let quant = QuantSettings::new().with_depthwise_bita_min(Some(four));
    let device = crate::device();
    let shapes = [
        (
            "mobilenet_v1",
            MobileNetV1Config::new(bits.clone())
                .with_width_mult(0.25)
                .with_quant(quant.clone())
                .init(&device)
                .layer_shapes([32, 32]),
            MobileNetV1Config::new(bits.clone())
                .with_width_mult(0.25)
                .init(&device)
                .layer_shapes([32, 32]),
        ),
        (
            "mobilenet_v2",
            MobileNetV2Config::new(bits.clone())
                .with_width_mult(0.25)
                .with_quant(quant)
                .init(&device)
                .layer_shapes([32, 32]),
            MobileNetV2Config::new(bits)
                .with_width_mult(0.25)
                .init(&device)
                .layer_shapes([32, 32]),
        ),
    ];
    for (name, floored, plain) in shapes {
        let two = BitWidth::new(2).unwrap();
        let with = cost(&floored, two, Accounting::Official);
        let without = cost(&plain, two, Accounting::Official);
        let mut depthwise = 0;
        for (a, b) in with.layers.iter().zip(&without.layers) {
            if a.name.contains("dw") {
                depthwise += 1;
                assert_eq!((a.bitw, a.bita), (2, 4), "{name} {}", a.name);
                assert_eq!(a.bitops, 2 * b.bitops, "{name} {}", a.name);
            } else {
                assert_eq!((a.bitw, a.bita), (b.bitw, b.bita), "{name} {}", a.name);
            }
        }
        assert!(depthwise >= 13, "{name}: {depthwise} depthwise rows");
        // At 4 bits and above the floor changes nothing.
        let four_bits =
            |s: &[adabits_models::LayerShape]| cost(s, four, Accounting::Official).gbitops;
        assert_eq!(four_bits(&floored), four_bits(&plain), "{name}");
    }
}

#[test]
fn a_dilated_convolution_counts_the_macs_of_its_output() {
    use adabits_models::QConv2dConfig;
    let device = crate::device();
    let bits: BitWidths = "8,4".parse().unwrap();
    // 3×3 at dilation 2 with padding 2 keeps an 8×8 map: 8·16·9·64 MACs; without the padding
    // the kernel spans 5 pixels and leaves 4×4.
    let same = QConv2dConfig::new([8, 16], [3, 3], bits.clone())
        .with_padding([2, 2])
        .with_dilation([2, 2])
        .init(&device);
    assert_eq!(same.output_size([8, 8]), [8, 8]);
    assert_eq!(same.layer_shape("c", [8, 8]).macs, 8 * 16 * 9 * 64);
    let valid = QConv2dConfig::new([8, 16], [3, 3], bits)
        .with_dilation([2, 2])
        .init(&device);
    assert_eq!(valid.output_size([8, 8]), [4, 4]);
    assert_eq!(valid.layer_shape("c", [8, 8]).macs, 8 * 16 * 9 * 16);
    assert_eq!(valid.layer_shape("c", [8, 8]).weights, 16 * 8 * 9);
}

#[test]
fn a_plans_cost_is_each_layers_macs_at_its_own_precision() {
    use adabits_models::cost_plan;
    use adabits_quant::Precision;
    let bits: BitWidths = "8,6,4".parse().unwrap();
    let model = CifarResNetConfig::new(20, bits).init(&crate::device());
    let shapes = model.layer_shapes([32, 32]);
    let quantized = shapes
        .iter()
        .filter(|s| s.kind != adabits_models::OpKind::AvgPool)
        .count();
    for b in [8u8, 6, 4] {
        let b = BitWidth::new(b).unwrap();
        let uniform = cost_plan(
            &shapes,
            &vec![Precision::uniform(b); quantized],
            Accounting::Official,
        );
        assert_eq!(uniform, cost(&shapes, b, Accounting::Official), "{b}");
    }
    // The second layer (the first body convolution) at w4a8, the rest at 6 bits.
    let mut plan = vec![Precision::uniform(BitWidth::new(6).unwrap()); quantized];
    plan[1] = "w4a8".parse().unwrap();
    let mixed = cost_plan(&shapes, &plan, Accounting::Official);
    let six = cost(&shapes, BitWidth::new(6).unwrap(), Accounting::Official);
    let l = &mixed.layers[1];
    assert_eq!((l.bitw, l.bita, l.bitops), (4, 8, l.macs * 32));
    assert_eq!(mixed.bits, 0);
    let delta = six.layers[1].bitops as i64 - l.bitops as i64;
    assert_eq!(
        ((six.gbitops - mixed.gbitops) * 1e9).round() as i64,
        delta,
        "only that layer's BitOPs change"
    );
    assert_eq!(mixed.layers[2], six.layers[2]);
}
