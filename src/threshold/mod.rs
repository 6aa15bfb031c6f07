//! Threshold-crossing event detection (SPEC §1, end). Placeholder: being written.

/// Settings of [`ThresholdCrossing`].
#[derive(Debug, Clone)]
pub struct ThresholdSettings {}

/// Threshold-crossing detector.
#[derive(Debug)]
pub struct ThresholdCrossing {}
