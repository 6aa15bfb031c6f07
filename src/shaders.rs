//! The WGSL sources, embedded in the binary. One file per kernel family in `shaders/`.

/// A WGSL module: its name and source text.
#[derive(Debug, Clone, Copy)]
pub struct Shader {
    /// Short name (the file stem).
    pub name: &'static str,
    /// WGSL source.
    pub source: &'static str,
}

/// Binned kernel activation (SPEC §1).
pub const BINNING: Shader = Shader {
    name: "binning",
    source: include_str!("../shaders/binning.wgsl"),
};

/// Threshold-crossing event detection (SPEC §1, end).
pub const THRESHOLD: Shader = Shader {
    name: "threshold",
    source: include_str!("../shaders/threshold.wgsl"),
};

/// Philox4x32-10, the shared counter-based generator (functions only; prepended to the
/// kernels that draw random numbers).
pub const PHILOX: Shader = Shader {
    name: "philox",
    source: include_str!("../shaders/philox.wgsl"),
};

/// Spike encoders (SPEC §4); Philox is prepended.
pub const ENCODERS: Shader = Shader {
    name: "encoders",
    source: concat!(
        include_str!("../shaders/philox.wgsl"),
        include_str!("../shaders/encoders.wgsl")
    ),
};

/// Max-rate classifier (SPEC §5).
pub const CLASSIFIER: Shader = Shader {
    name: "classifier",
    source: include_str!("../shaders/classifier.wgsl"),
};

/// Covariance accumulation and linear regression rereferencing (SPEC §2), for any channel
/// layout: the shared kernels with `lrr_any.wgsl` appended.
pub const LRR: Shader = Shader {
    name: "lrr",
    source: concat!(
        include_str!("../shaders/lrr.wgsl"),
        include_str!("../shaders/lrr_any.wgsl")
    ),
};

/// The same kernels for layouts of aligned 4-channel runs (vector loads and stores): the
/// shared kernels with `lrr_quad.wgsl` appended.
pub const LRR_QUAD: Shader = Shader {
    name: "lrr_quad",
    source: concat!(
        include_str!("../shaders/lrr.wgsl"),
        include_str!("../shaders/lrr_quad.wgsl")
    ),
};

/// Recurrent Poisson GLM simulation (SPEC §3); Philox is prepended.
pub const GLM: Shader = Shader {
    name: "glm",
    source: concat!(
        include_str!("../shaders/philox.wgsl"),
        include_str!("../shaders/glm.wgsl")
    ),
};

/// Causal IIR filter in second-order sections (SPEC §7, "Filter"), in double-single `f32`
/// arithmetic (every device).
pub const FILTER: Shader = Shader {
    name: "filter",
    source: concat!(
        include_str!("../shaders/filter_ds.wgsl"),
        include_str!("../shaders/filter.wgsl")
    ),
};

/// The same filter in native `f64`, for devices with `SHADER_F64`.
pub const FILTER_F64: Shader = Shader {
    name: "filter_f64",
    source: concat!(
        include_str!("../shaders/filter_f64.wgsl"),
        include_str!("../shaders/filter.wgsl")
    ),
};

/// Common-average reference (SPEC §7, "Reference").
pub const REFERENCE: Shader = Shader {
    name: "reference",
    source: include_str!("../shaders/reference.wgsl"),
};

/// Synthesis of the simulated recording (SPEC §7, "Closed-loop simulation"); Philox is
/// prepended.
pub const SYNTH: Shader = Shader {
    name: "synth",
    source: concat!(
        include_str!("../shaders/philox.wgsl"),
        include_str!("../shaders/synth.wgsl")
    ),
};

/// Shaders that need `f64` (used only where the device has it), for validation.
pub const NEEDS_F64: &[Shader] = &[FILTER_F64];

/// Every shader of the crate that runs on any device, for validation.
pub const ALL: &[Shader] = &[
    BINNING, THRESHOLD, PHILOX, ENCODERS, CLASSIFIER, LRR, LRR_QUAD, GLM, FILTER, REFERENCE, SYNTH,
];

#[cfg(test)]
mod tests {
    use super::{Shader, ALL, NEEDS_F64};
    use naga::valid::{Capabilities, ValidationFlags, Validator};

    /// Parses and validates `shader` with naga and no optional capability; the error names
    /// the shader and carries naga's rendered diagnostic.
    fn check(shader: &Shader) -> Result<(), String> {
        check_with(shader, Capabilities::empty())
    }

    /// [`check`] with the capabilities `caps`.
    fn check_with(shader: &Shader, caps: Capabilities) -> Result<(), String> {
        let path = format!("shaders/{}.wgsl", shader.name);
        let module = naga::front::wgsl::parse_str(shader.source).map_err(|e| {
            format!(
                "shader `{}` does not parse:\n{}",
                shader.name,
                e.emit_to_string_with_path(shader.source, &path)
            )
        })?;
        Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .map_err(|e| {
                format!(
                    "shader `{}` does not validate (with {caps:?}):\n{}",
                    shader.name,
                    e.emit_to_string_with_path(shader.source, &path)
                )
            })?;
        Ok(())
    }

    /// Every embedded shader parses and validates with naga, with no optional capability:
    /// no `f64`, `i64` or subgroup operations, which the GL backend lacks.
    #[test]
    fn every_shader_parses_and_validates_without_capabilities() {
        let failures: Vec<String> = ALL.iter().filter_map(|s| check(s).err()).collect();
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    /// The `f64` shaders validate with `FLOAT64` and are refused without it (they are only
    /// built where the device has `SHADER_F64`).
    #[test]
    fn f64_shaders_validate_with_float64_only() {
        for s in NEEDS_F64 {
            if let Err(e) = check_with(s, Capabilities::FLOAT64) {
                panic!("{e}");
            }
            let err = check(s).expect_err("an f64 shader validated without FLOAT64");
            assert!(err.contains("FLOAT64"), "{err}");
        }
    }

    /// The check itself catches what it is for: syntax errors and `f64`, with the shader named.
    #[test]
    fn the_check_rejects_bad_shaders_by_name() {
        let syntax = Shader {
            name: "broken",
            source: "fn f( { }",
        };
        let err = check(&syntax).unwrap_err();
        assert!(err.contains("`broken` does not parse"), "{err}");
        let wide = Shader {
            name: "wide",
            source: "@group(0) @binding(0) var<storage, read_write> x: array<f64>;\n\
                     @compute @workgroup_size(1) fn main() { x[0] = 1.0lf; }",
        };
        let err = check(&wide).unwrap_err();
        assert!(err.contains("`wide` does not validate"), "{err}");
        assert!(err.contains("FLOAT64"), "{err}");
    }

    /// Shader names are unique: the pipeline cache is keyed by them.
    #[test]
    fn shader_names_are_unique() {
        let mut names: Vec<&str> = ALL.iter().chain(NEEDS_F64).map(|s| s.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate shader names in `ALL`");
    }
}
