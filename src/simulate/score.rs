//! Scores against the ground truth: detection precision and recall, classification accuracy.

use crate::events::Event;

/// Detection scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectionScore {
    /// True spikes.
    pub true_spikes: usize,
    /// Detected events.
    pub detections: usize,
    /// Detections matched one-to-one to a true spike.
    pub matched: usize,
}

impl DetectionScore {
    /// Matched detections over detections (1 when nothing was detected).
    pub fn precision(&self) -> f64 {
        if self.detections == 0 {
            1.0
        } else {
            self.matched as f64 / self.detections as f64
        }
    }
    /// Matched true spikes over true spikes (1 when there were none).
    pub fn recall(&self) -> f64 {
        if self.true_spikes == 0 {
            1.0
        } else {
            self.matched as f64 / self.true_spikes as f64
        }
    }
}

/// Matches detections to true onsets, per channel, one to one: a detection at sample `d`
/// matches the earliest unmatched onset `o` of its channel with `o ≤ d ≤ o + window`.
pub fn score_detections(
    onsets: &[(u64, u32)],
    events: &[Event],
    n_channels: usize,
    window: u64,
) -> DetectionScore {
    let mut truth: Vec<Vec<u64>> = vec![Vec::new(); n_channels];
    for &(s, c) in onsets {
        if let Some(v) = truth.get_mut(c as usize) {
            v.push(s);
        }
    }
    let mut det: Vec<Vec<u64>> = vec![Vec::new(); n_channels];
    for e in events {
        if let Some(v) = det.get_mut(e.channel as usize) {
            v.push(e.sample);
        }
    }
    let mut matched = 0;
    for (t, d) in truth.iter_mut().zip(det.iter_mut()) {
        t.sort_unstable();
        d.sort_unstable();
        let mut i = 0;
        for &x in d.iter() {
            while i < t.len() && t[i] + window < x {
                i += 1;
            }
            if i < t.len() && t[i] <= x {
                matched += 1;
                i += 1;
            }
        }
    }
    DetectionScore {
        true_spikes: onsets.len(),
        detections: events.len(),
        matched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(sample: u64, channel: u32) -> Event {
        Event {
            sample,
            channel,
            value: 1.0,
        }
    }

    #[test]
    fn matching_is_one_to_one_within_the_window() {
        let truth = [(100, 0), (200, 0), (150, 1)];
        // 105 matches 100; 106 finds 100 taken and 200 not yet begun; 231 is past 200 + 30;
        // channel 1's detection before its onset does not count.
        let events = [ev(105, 0), ev(106, 0), ev(231, 0), ev(149, 1)];
        let s = score_detections(&truth, &events, 2, 30);
        assert_eq!(s.matched, 1);
        assert_eq!((s.true_spikes, s.detections), (3, 4));
        let s = score_detections(&truth, &[ev(130, 0), ev(200, 0), ev(180, 1)], 2, 30);
        assert_eq!(s.matched, 3);
        assert_eq!(s.precision(), 1.0);
        assert_eq!(s.recall(), 1.0);
    }
}
