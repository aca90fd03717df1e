//! Dequantization against gguf-py reference fixtures
//! (`model/tests/data/quant/`, made by `scripts/fixtures/gen_quant_fixtures.py`).

use std::path::PathBuf;

use medgemma_model::quant::{GgmlType, QuantError, dequantize};

const FIXTURE_TYPES: [&str; 11] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
];

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant")
}

struct Fixture {
    ty: GgmlType,
    n: usize,
    bytes: Vec<u8>,
    expected_bits: Vec<u32>,
}

fn load_fixture(name: &str) -> Fixture {
    let dir = fixture_dir();
    let bytes = std::fs::read(dir.join(format!("{name}.bin"))).expect("read fixture .bin");
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!("{name}.json"))).expect("read fixture .json"),
    )
    .expect("fixture .json parses");
    assert_eq!(meta["type"], name);
    let type_id = meta["type_id"].as_u64().expect("type_id") as u32;
    let n = meta["n"].as_u64().expect("n") as usize;
    let expected_bits = meta["f32_bits"]
        .as_array()
        .expect("f32_bits")
        .iter()
        .map(|v| v.as_u64().expect("bit pattern") as u32)
        .collect();
    Fixture {
        ty: GgmlType::from_id(type_id),
        n,
        bytes,
        expected_bits,
    }
}

#[test]
fn every_type_matches_gguf_py_bit_for_bit() {
    for name in FIXTURE_TYPES {
        let f = load_fixture(name);
        assert_eq!(
            format!("{:?}", f.ty),
            name,
            "type id maps to the right variant"
        );
        assert!(f.ty.can_dequantize(), "{name} is supported");
        assert_eq!(f.ty.byte_size(f.n), Some(f.bytes.len()), "{name} byte size");
        let got = dequantize(f.ty, &f.bytes, f.n).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.len(), f.n);
        assert_eq!(f.expected_bits.len(), f.n);
        for (i, (g, &want)) in got.iter().zip(&f.expected_bits).enumerate() {
            assert_eq!(
                g.to_bits(),
                want,
                "{name}[{i}]: got {g:e}, gguf-py gives {:e}",
                f32::from_bits(want)
            );
        }
    }
}

#[test]
fn wrong_byte_length_is_an_error() {
    let f = load_fixture("Q4_K");
    let short = &f.bytes[..f.bytes.len() - 1];
    assert!(matches!(
        dequantize(f.ty, short, f.n),
        Err(QuantError::WrongByteLength {
            expected: 576,
            actual: 575,
            ..
        })
    ));
    let mut long = f.bytes.clone();
    long.push(0);
    assert!(matches!(
        dequantize(f.ty, &long, f.n),
        Err(QuantError::WrongByteLength { .. })
    ));
}

#[test]
fn partial_block_is_an_error() {
    let f = load_fixture("Q8_0");
    assert!(matches!(
        dequantize(f.ty, &f.bytes, f.n - 1),
        Err(QuantError::NotBlockMultiple { block: 32, .. })
    ));
}

#[test]
fn huge_element_count_fails_before_allocating() {
    // A corrupt shape must not turn into a multi-terabyte allocation.
    assert!(matches!(
        dequantize(GgmlType::F32, &[0; 16], usize::MAX / 2),
        Err(QuantError::WrongByteLength { .. })
    ));
}

#[test]
fn unsupported_types_are_named() {
    for ty in [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::IQ4_XS,
        GgmlType::Other(99),
    ] {
        let err = dequantize(ty, &[], 0).expect_err("unsupported");
        assert!(matches!(err, QuantError::Unsupported { .. }));
        assert!(err.to_string().contains(&format!("{ty}")), "{err}");
    }
}

#[test]
fn type_ids_round_trip() {
    for id in 0..64 {
        let ty = GgmlType::from_id(id);
        assert_eq!(ty.id(), id);
        assert_eq!(
            ty.block_layout().is_none(),
            matches!(ty, GgmlType::Other(_))
        );
    }
    // Ids removed upstream are not known types.
    for id in [4, 5, 9, 31, 32, 33, 36, 37, 38] {
        assert_eq!(GgmlType::from_id(id), GgmlType::Other(id));
    }
}

#[test]
fn empty_input_gives_empty_output() {
    for name in FIXTURE_TYPES {
        let ty = load_fixture(name).ty;
        assert_eq!(dequantize(ty, &[], 0).expect("empty"), Vec::<f32>::new());
    }
}
