//! Placing text labels next to points without covering markers, lines or each other.
//!
//! plotters draws text where it is told; with a dense α sweep, labels put blindly on the
//! same side of every point overlap the curve and one another. This keeps a list of
//! occupied pixel boxes and tries a few positions around each point.

/// A pixel box, `x0 <= x < x1`, `y0 <= y < y1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x0: i32,
    pub y0: i32,
    pub x1: i32,
    pub y1: i32,
}

impl Rect {
    pub fn around((x, y): (i32, i32), r: i32) -> Self {
        Rect { x0: x - r, y0: y - r, x1: x + r + 1, y1: y + r + 1 }
    }

    pub fn grow(self, by: i32) -> Self {
        Rect { x0: self.x0 - by, y0: self.y0 - by, x1: self.x1 + by, y1: self.y1 + by }
    }

    pub fn contains(&self, (x, y): (i32, i32)) -> bool {
        x >= self.x0 && x < self.x1 && y >= self.y0 && y < self.y1
    }

    pub fn overlaps(&self, other: &Rect) -> bool {
        self.x0 < other.x1 && other.x0 < self.x1 && self.y0 < other.y1 && other.y0 < self.y1
    }

    fn inside(&self, frame: &Rect) -> bool {
        self.x0 >= frame.x0 && self.y0 >= frame.y0 && self.x1 <= frame.x1 && self.y1 <= frame.y1
    }
}

/// Points along a polyline, one every `step` pixels (and every vertex).
pub fn sample_polyline(line: &[(i32, i32)], step: i32) -> impl Iterator<Item = (i32, i32)> + '_ {
    let step = step.max(1) as f64;
    line.windows(2).flat_map(move |w| {
        let ((ax, ay), (bx, by)) = (w[0], w[1]);
        let (dx, dy) = ((bx - ax) as f64, (by - ay) as f64);
        let n = ((dx.hypot(dy) / step).ceil() as i32).max(1);
        (0..=n).map(move |i| {
            let t = i as f64 / n as f64;
            (ax + (dx * t).round() as i32, ay + (dy * t).round() as i32)
        })
    })
}

/// Occupied boxes inside a frame; labels go where nothing is.
pub struct LabelPlacer {
    frame: Rect,
    taken: Vec<Rect>,
}

impl LabelPlacer {
    pub fn new(frame: Rect) -> Self {
        Self { frame, taken: Vec::new() }
    }

    pub fn block(&mut self, rect: Rect) {
        self.taken.push(rect);
    }

    pub fn block_point(&mut self, at: (i32, i32), radius: i32) {
        self.block(Rect::around(at, radius));
    }

    /// Blocks a line `half_width` pixels either side of its centre.
    pub fn block_polyline(&mut self, line: &[(i32, i32)], half_width: i32) {
        let boxes: Vec<Rect> = sample_polyline(line, 3).map(|p| Rect::around(p, half_width)).collect();
        self.taken.extend(boxes);
    }

    /// The top-left corner for a `size` label beside a marker of radius `gap` at `at`: right,
    /// left, above, below, then the diagonals, whichever is free first. `None` when all are
    /// taken; the chosen box is taken from then on.
    pub fn place(&mut self, at: (i32, i32), gap: i32, (w, h): (i32, i32)) -> Option<(i32, i32)> {
        let (x, y) = at;
        let candidates = [
            (x + gap, y - h / 2),
            (x - gap - w, y - h / 2),
            (x - w / 2, y - gap - h),
            (x - w / 2, y + gap),
            (x + gap, y - gap - h),
            (x + gap, y + gap),
            (x - gap - w, y - gap - h),
            (x - gap - w, y + gap),
        ];
        let free = candidates
            .into_iter()
            .map(|(x0, y0)| Rect { x0, y0, x1: x0 + w, y1: y0 + h })
            .find(|r| r.inside(&self.frame) && !self.taken.iter().any(|t| t.overlaps(r)))?;
        self.taken.push(free);
        Some((free.x0, free.y0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_avoid_each_other_and_the_frame() {
        let mut placer = LabelPlacer::new(Rect { x0: 0, y0: 0, x1: 100, y1: 100 });
        placer.block_point((50, 50), 4);
        assert_eq!(placer.place((50, 50), 6, (20, 10)), Some((56, 45)));
        // The right side is taken now: the second label goes left.
        assert_eq!(placer.place((50, 50), 6, (20, 10)), Some((24, 45)));
        // Near the right edge, a label cannot go right.
        assert_eq!(placer.place((95, 20), 6, (20, 10)), Some((69, 15)));
        // Nowhere to go in a tiny frame.
        let mut tiny = LabelPlacer::new(Rect { x0: 0, y0: 0, x1: 10, y1: 10 });
        assert_eq!(tiny.place((5, 5), 2, (20, 10)), None);
    }

    #[test]
    fn polyline_samples_cover_segments() {
        let pts: Vec<_> = sample_polyline(&[(0, 0), (10, 0)], 5).collect();
        assert_eq!(pts, [(0, 0), (5, 0), (10, 0)]);
    }
}
