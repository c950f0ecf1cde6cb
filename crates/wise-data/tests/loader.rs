//! The batch loader: deterministic eval order, reproducible training shuffle and
//! augmentation, early stop without deadlock, and bad images stopped on or skipped.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use wise_clip::preprocess::load_rgb;
use wise_clip::ImagePreprocessor;
use wise_data::{sample_rng, shuffled_order, Batch, Dataset, Loader, OnBadImage};

const SIDE: usize = 8;

/// `n` distinct 12×10 gradient images over 3 classes, so crops and resizes differ per image.
fn gradient_dataset(n: usize) -> (tempfile::TempDir, Dataset) {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..n {
        let path = dir.path().join(format!("c{}", i % 3)).join(format!("{i:03}.png"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let img = image::RgbImage::from_fn(12, 10, |x, y| {
            image::Rgb([(x * 20 + i as u32 * 7) as u8, (y * 25) as u8, (i as u32 * 11 + x * y) as u8])
        });
        img.save(&path).unwrap();
    }
    let ds = Dataset::open(dir.path(), None).unwrap();
    assert_eq!(ds.len(), n);
    (dir, ds)
}

fn loader(ds: &Dataset, batch_size: usize) -> Loader {
    Loader::new(ds, ImagePreprocessor::new(SIDE), &Device::Cpu).with_batch_size(batch_size)
}

fn collect(batches: impl Iterator<Item = wise_data::Result<Batch>>) -> Vec<Batch> {
    batches.map(|b| b.unwrap()).collect()
}

/// Per-image pixel rows of a batch.
fn rows(batch: &Batch) -> Vec<Vec<f32>> {
    batch.pixels.flatten_from(1).unwrap().to_vec2::<f32>().unwrap()
}

fn indices(batches: &[Batch]) -> Vec<usize> {
    batches.iter().flat_map(|b| b.indices.clone()).collect()
}

#[test]
fn eval_is_in_dataset_order_with_the_eval_transform() {
    let (_dir, ds) = gradient_dataset(10);
    let pre = ImagePreprocessor::new(SIDE);
    let batches = collect(loader(&ds, 4).eval().unwrap());
    assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), vec![4, 4, 2]);
    assert_eq!(indices(&batches), (0..10).collect::<Vec<_>>());
    for b in &batches {
        assert_eq!(b.pixels.dims(), &[b.len(), 3, SIDE, SIDE]);
        assert_eq!(b.pixels.dtype(), candle_core::DType::F32);
        for ((row, &i), &label) in rows(b).iter().zip(&b.indices).zip(&b.labels) {
            assert_eq!(label as usize, ds.samples[i].label);
            assert_eq!(row, &pre.eval(&load_rgb(&ds.samples[i].path).unwrap()).unwrap());
        }
        assert_eq!(b.labels_tensor(&Device::Cpu).unwrap().to_vec1::<u32>().unwrap(), b.labels);
    }
    // Same again, whatever the batch size or prefetch depth.
    let again = collect(loader(&ds, 3).with_prefetch(0).eval().unwrap());
    let flat = |bs: &[Batch]| bs.iter().flat_map(rows).collect::<Vec<_>>();
    assert_eq!(flat(&again), flat(&batches));
}

#[test]
fn training_shuffle_and_augmentation_are_reproducible_from_the_seed() {
    let (_dir, ds) = gradient_dataset(12);
    let pre = ImagePreprocessor::new(SIDE);
    let run = |batch_size: usize, seed: u64, epoch: u64| {
        collect(loader(&ds, batch_size).train(seed, epoch).unwrap())
    };

    let a = run(5, 7, 0);
    let order = indices(&a);
    assert_eq!(order, shuffled_order(12, 7, 0));
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..12).collect::<Vec<_>>(), "a permutation");
    assert_ne!(order, (0..12).collect::<Vec<_>>(), "shuffled");
    assert_ne!(shuffled_order(12, 7, 1), order, "a new order each epoch");
    assert_ne!(shuffled_order(12, 8, 0), order, "a new order for another seed");

    // Each image's crop comes from its own (seed, epoch, index) generator: same pixels
    // whatever the batch size (and so whatever thread made it).
    let b = run(2, 7, 0);
    assert_eq!(indices(&b), order);
    let by_index = |batches: &[Batch]| {
        let mut all: Vec<(usize, Vec<f32>)> =
            batches.iter().flat_map(|bt| bt.indices.clone().into_iter().zip(rows(bt))).collect();
        all.sort_by_key(|(i, _)| *i);
        all
    };
    let (pa, pb) = (by_index(&a), by_index(&b));
    assert_eq!(pa, pb);
    for (i, pixels) in &pa {
        let img = load_rgb(&ds.samples[*i].path).unwrap();
        assert_eq!(pixels, &pre.train(&img, &mut sample_rng(7, 0, *i)).unwrap());
    }
    // Another epoch augments differently.
    let pc = by_index(&run(5, 7, 1));
    assert!(pa.iter().zip(&pc).any(|(x, y)| x.1 != y.1), "epoch 1 crops should differ somewhere");
}

/// Normalised on the device (8-bit levels sent, the default on accelerators) or on the
/// loader's threads, the batches are the same to the bit: eval and training passes.
#[test]
fn normalizing_on_the_device_gives_the_same_batches() {
    let (_dir, ds) = gradient_dataset(7);
    let flat = |bs: Vec<Batch>| bs.iter().flat_map(rows).collect::<Vec<_>>();
    for on_device in [false, true] {
        let l = loader(&ds, 3).with_normalize_on_device(on_device);
        let (eval, train) = (flat(collect(l.eval().unwrap())), flat(collect(l.train(5, 1).unwrap())));
        let pre = ImagePreprocessor::new(SIDE);
        for (row, sample) in eval.iter().zip(&ds.samples) {
            assert_eq!(row, &pre.eval(&load_rgb(&sample.path).unwrap()).unwrap(), "on device: {on_device}");
        }
        for (row, &i) in train.iter().zip(&shuffled_order(7, 5, 1)) {
            let img = load_rgb(&ds.samples[i].path).unwrap();
            assert_eq!(row, &pre.train(&img, &mut sample_rng(5, 1, i)).unwrap(), "on device: {on_device}");
        }
    }
}

/// `waited` is the time `next` blocked on the producer, not the consumer's own time between
/// batches: a consumer far slower than decoding these tiny images waits for almost nothing.
#[test]
fn waited_counts_only_the_time_blocked_on_the_loader() {
    let (_dir, ds) = gradient_dataset(12);
    let start = Instant::now();
    let mut batches = loader(&ds, 2).train(3, 0).unwrap();
    let mut n = 0;
    for batch in batches.by_ref() {
        batch.unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(40)); // the model's step
    }
    assert_eq!(n, 6);
    let (waited, elapsed) = (batches.waited(), start.elapsed());
    assert!(elapsed >= Duration::from_millis(240));
    assert!(waited < Duration::from_millis(100), "waited {waited:?} of {elapsed:?}");
}

#[test]
fn drop_last_and_batch_size_zero() {
    let (_dir, ds) = gradient_dataset(7);
    let l = loader(&ds, 3).with_drop_last(true);
    assert_eq!(l.num_batches(), 2);
    let batches = collect(l.train(1, 0).unwrap());
    assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), vec![3, 3]);
    assert_eq!(loader(&ds, 3).num_batches(), 3);
    assert!(loader(&ds, 0).eval().unwrap_err().to_string().contains("batch size"));
}

#[test]
fn dropping_the_iterator_early_stops_the_producer() {
    let (_dir, ds) = gradient_dataset(40);
    let start = Instant::now();
    for prefetch in [0, 1, 3] {
        let mut batches = loader(&ds, 1).with_prefetch(prefetch).eval().unwrap();
        assert_eq!(batches.next().unwrap().unwrap().indices, vec![0]);
        assert_eq!(batches.next().unwrap().unwrap().indices, vec![1]);
        // Let the producer fill the queue and block on it.
        std::thread::sleep(Duration::from_millis(50));
        drop(batches); // joins the producer: would hang if it stayed blocked
        drop(loader(&ds, 1).with_prefetch(prefetch).train(3, 0).unwrap()); // never consumed
    }
    assert!(start.elapsed() < Duration::from_secs(30));
}

fn corrupt(path: &Path) {
    std::fs::write(path, b"\x89PNG\r\n\x1a\nthis is not really a png").unwrap();
}

#[test]
fn bad_images_stop_the_pass_or_are_skipped_and_counted() {
    let (dir, ds) = gradient_dataset(9);
    let bad = dir.path().join("c1/004.png");
    assert_eq!(ds.samples[4].path, bad);
    corrupt(&bad);

    // Error: the batch with the bad file is an error naming it, then the pass ends.
    let mut batches = loader(&ds, 2).eval().unwrap();
    assert_eq!(batches.next().unwrap().unwrap().indices, vec![0, 1]);
    assert_eq!(batches.next().unwrap().unwrap().indices, vec![2, 3]);
    let e = batches.next().unwrap().unwrap_err().to_string();
    assert!(e.contains("004.png"), "{e}");
    assert!(batches.next().is_none());

    // Skip: everything else arrives, the bad one is counted and named.
    let mut batches = loader(&ds, 2).with_on_bad_image(OnBadImage::Skip).eval().unwrap();
    let got: Vec<usize> = batches.by_ref().flat_map(|b| b.unwrap().indices).collect();
    assert_eq!(got, vec![0, 1, 2, 3, 5, 6, 7, 8]);
    let report = batches.skipped();
    assert_eq!(report.count, 1);
    assert_eq!(report.first.len(), 1);
    assert_eq!(report.first[0].0, bad);
    let text = report.to_string();
    assert!(text.contains("skipped 1 unreadable image") && text.contains("004.png"), "{text}");

    // A batch whose every image is bad is left out, not sent empty.
    let missing = dir.path().join("c2/005.png");
    std::fs::remove_file(&missing).unwrap();
    let mut batches = loader(&ds, 1).with_on_bad_image(OnBadImage::Skip).train(0, 0).unwrap();
    let got = batches.by_ref().map(|b| b.unwrap()).inspect(|b| assert!(!b.is_empty())).count();
    assert_eq!(got, 7);
    assert_eq!(batches.skipped().count, 2);
}

/// Throughput on real data (USPS test, 2,007 images, imported here) at CLIP's 224 px:
/// `cargo test --release -p wise-data --test loader -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn throughput_on_usps_test() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/digits/usps");
    if !data.is_dir() {
        eprintln!("skipping: no {}", data.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    wise_data::import(wise_data::Source::Usps, &data.join("zip.test.gz"), &tmp.path().join("usps"), false)
        .unwrap();
    let ds = Dataset::open(&tmp.path().join("usps/test"), None).unwrap();
    let loader = Loader::new(&ds, ImagePreprocessor::new(224), &Device::Cpu).with_batch_size(64);
    for (what, batches) in [("eval", loader.eval().unwrap()), ("train", loader.train(0, 0).unwrap())] {
        let start = Instant::now();
        let n: usize = batches.map(|b| b.unwrap().len()).sum();
        let secs = start.elapsed().as_secs_f64();
        eprintln!("{what}: {n} images in {secs:.2} s = {:.0} images/s", n as f64 / secs);
    }
}
