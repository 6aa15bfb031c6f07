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

/// Every shader of the crate, for validation.
pub const ALL: &[Shader] = &[BINNING, THRESHOLD];
