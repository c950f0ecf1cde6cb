//! Top-1 / top-5 / per-class accuracy, with datasets that hold a subset of the classes.

use candle_core::Tensor;

use crate::{Error, Result};

/// That every logit is a number: a NaN or infinite one means the classifier's weights or
/// preprocessing are broken, and any ranking or sampling from it is meaningless.
pub fn finite_logits(logits: &[f32]) -> std::result::Result<(), String> {
    match logits.iter().find(|v| !v.is_finite()) {
        None => Ok(()),
        Some(bad) => {
            Err(format!("the classifier gives a logit of {bad}: its weights or its preprocessing are broken"))
        }
    }
}

/// Which classifier output each dataset class is, matched by readable class name.
#[derive(Debug, Clone)]
pub struct ClassMap {
    /// Classifier index of dataset class `i`.
    pub to_classifier: Vec<usize>,
    /// The classifier's classes this dataset has (the others are masked out).
    pub present: Vec<bool>,
    /// Dataset class names, for per-class reports.
    pub names: Vec<String>,
}

impl ClassMap {
    /// Errors list every dataset class name the classifier does not know.
    pub fn new(classifier: &[String], dataset: &[String]) -> std::result::Result<Self, String> {
        let mut to_classifier = Vec::with_capacity(dataset.len());
        let mut unknown = Vec::new();
        for name in dataset {
            match classifier.iter().position(|c| c == name) {
                Some(i) => to_classifier.push(i),
                None => unknown.push(name.as_str()),
            }
        }
        if !unknown.is_empty() {
            return Err(format!(
                "class names not known to the classifier: {} (the classifier has: {})",
                unknown.join(", "),
                preview(classifier)
            ));
        }
        let mut present = vec![false; classifier.len()];
        for &i in &to_classifier {
            present[i] = true;
        }
        Ok(Self { to_classifier, present, names: dataset.to_vec() })
    }

    /// True when the dataset has every class of the classifier (no masking needed).
    pub fn is_complete(&self) -> bool {
        self.present.iter().all(|&p| p)
    }
}

fn preview(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(12).map(String::as_str).collect();
    if names.len() > shown.len() {
        format!("{}, … ({} in all)", shown.join(", "), names.len())
    } else {
        shown.join(", ")
    }
}

/// Running counts over batches.
#[derive(Debug, Clone)]
pub struct Metrics {
    map: ClassMap,
    pub n: usize,
    pub top1_correct: usize,
    pub top5_correct: usize,
    /// (correct, total) per dataset class.
    pub per_class: Vec<(usize, usize)>,
}

impl Metrics {
    pub fn new(map: &ClassMap) -> Self {
        Self {
            map: map.clone(),
            n: 0,
            top1_correct: 0,
            top5_correct: 0,
            per_class: vec![(0, 0); map.names.len()],
        }
    }

    /// `logits`: `[B, C]` over the classifier's classes; `labels`: dataset class indices.
    /// A logit that is NaN or infinite is an error: no score ranks above a NaN, so a
    /// broken model (a NaN weight, a zero std in its preprocessing) scored 100 %.
    pub fn update(&mut self, logits: &Tensor, labels: &[u32]) -> Result<()> {
        let rows = logits.to_vec2::<f32>()?;
        rows.iter().try_for_each(|row| finite_logits(row)).map_err(Error::Invalid)?;
        for (row, &label) in rows.iter().zip(labels) {
            let target = self.map.to_classifier[label as usize];
            // Rank of the target among the classes this dataset has: how many score higher
            // (ties resolved in favour of the lower index, like a stable sort).
            let score = row[target];
            let rank = row
                .iter()
                .enumerate()
                .filter(|&(i, &s)| self.map.present[i] && (s > score || (s == score && i < target)))
                .count();
            self.n += 1;
            let class = &mut self.per_class[label as usize];
            class.1 += 1;
            if rank == 0 {
                self.top1_correct += 1;
                class.0 += 1;
            }
            if rank < 5 {
                self.top5_correct += 1;
            }
        }
        Ok(())
    }

    pub fn top1(&self) -> f64 {
        ratio(self.top1_correct, self.n)
    }

    pub fn top5(&self) -> f64 {
        ratio(self.top5_correct, self.n)
    }

    /// (class name, accuracy, images) per dataset class.
    pub fn per_class_accuracy(&self) -> Vec<(String, f64, usize)> {
        self.map.names.iter().zip(&self.per_class).map(|(n, &(c, t))| (n.clone(), ratio(c, t), t)).collect()
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn top1_top5_and_per_class() {
        let classes = names(&["a", "b", "c", "d", "e", "f"]);
        let map = ClassMap::new(&classes, &classes).unwrap();
        let mut m = Metrics::new(&map);
        let logits = Tensor::new(
            &[
                [9.0f32, 1.0, 2.0, 3.0, 4.0, 5.0], // label 0: top-1
                [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],    // label 1: rank 5 -> miss top-5
                [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],    // label 2: rank 4 -> top-5
            ],
            &Device::Cpu,
        )
        .unwrap();
        m.update(&logits, &[0, 1, 2]).unwrap();
        assert_eq!((m.n, m.top1_correct, m.top5_correct), (3, 1, 2));
        assert_eq!(m.per_class_accuracy()[0], ("a".to_string(), 1.0, 1));
        assert_eq!(m.per_class_accuracy()[1], ("b".to_string(), 0.0, 1));
    }

    /// A NaN logit outranks nothing, so it ranked every target first: 100 % for a broken
    /// model. It is an error now, and the batch counts for nothing.
    #[test]
    fn non_finite_logits_are_an_error_not_a_score() {
        let classes = names(&["a", "b"]);
        let map = ClassMap::new(&classes, &classes).unwrap();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut m = Metrics::new(&map);
            let logits = Tensor::new(&[[1.0f32, 2.0], [bad, 0.0]], &Device::Cpu).unwrap();
            let err = m.update(&logits, &[0, 1]).unwrap_err().to_string();
            assert!(err.contains(&format!("a logit of {bad}")), "{err}");
            assert_eq!((m.n, m.top1_correct), (0, 0));
        }
    }

    #[test]
    fn subset_datasets_mask_absent_classes_by_name() {
        let classifier = names(&["cat", "dog", "bird"]);
        // A dataset with only dog and cat, in its own order.
        let map = ClassMap::new(&classifier, &names(&["dog", "cat"])).unwrap();
        assert!(!map.is_complete());
        let mut m = Metrics::new(&map);
        // "bird" scores highest but is not in the dataset: masked, so "dog" wins.
        let logits = Tensor::new(&[[1.0f32, 2.0, 5.0]], &Device::Cpu).unwrap();
        m.update(&logits, &[0]).unwrap();
        assert_eq!(m.top1_correct, 1);

        let err = ClassMap::new(&classifier, &names(&["dog", "fish", "cow"])).unwrap_err();
        assert!(err.contains("fish, cow") && err.contains("cat, dog, bird"), "{err}");
    }
}
