//! The cost profiler against the official profiler's figures (METHOD.md §10.3).

use adabits_models::{Accounting, CifarResNetConfig, cost};
use adabits_quant::{BitWidth, BitWidths};

/// `value` printed with `decimals` decimals equals `printed`.
fn prints_as(value: f64, decimals: usize, printed: &str) -> bool {
    format!("{value:.decimals$}") == printed
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
    for (b, gbitops, mb) in expected {
        let report = cost(&shapes, BitWidth::new(b).unwrap(), Accounting::Official);
        assert_eq!(report.macs, 40_817_280, "{b} bits");
        assert_eq!(report.params, 270_906, "{b} bits");
        let decimals = gbitops.split('.').nth(1).unwrap().len();
        assert!(
            prints_as(report.gbitops, decimals, gbitops),
            "{b} bits: {} GBitOPs, official {gbitops}",
            report.gbitops
        );
        assert!(
            prints_as(report.size_mb, 3, mb),
            "{b} bits: {} MB, official {mb}",
            report.size_mb
        );
    }
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
