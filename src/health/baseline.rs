//! A robust long-window baseline: the median of the last N healthy intervals' values.
use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub(super) struct Baseline {
    window: usize,
    values: VecDeque<f64>,
}

impl Baseline {
    pub(super) fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            values: VecDeque::new(),
        }
    }

    pub(super) fn push(&mut self, value: f64) {
        if self.values.len() == self.window {
            self.values.pop_front();
        }
        self.values.push_back(value);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.values.len()
    }

    /// The median, once at least `min` values were seen.
    pub(super) fn median(&self, min: usize) -> Option<f64> {
        if self.values.len() < min.max(1) {
            return None;
        }
        let mut sorted: Vec<f64> = self.values.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        Some(if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_a_bounded_window() {
        let mut b = Baseline::new(3);
        assert_eq!(b.median(1), None);
        for v in [10.0, 1.0, 2.0, 3.0] {
            b.push(v);
        }
        assert_eq!(b.len(), 3, "the oldest value left the window");
        assert_eq!(b.median(3), Some(2.0));
        assert_eq!(b.median(4), None, "not warm");
    }
}
