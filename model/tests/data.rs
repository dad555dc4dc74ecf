//! Procedural data sets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use model::data::{generic_image, tree_image, Dataset};

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

#[test]
fn generators_are_deterministic_in_range_and_varied() {
    for make in [tree_image, generic_image] {
        let a = make(1, 0, 32);
        assert_eq!(a.len(), 3 * 32 * 32);
        assert_eq!(a, make(1, 0, 32));
        assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
        let images: Vec<Vec<f32>> = (0..16).map(|i| make(1, i, 32)).collect();
        for i in 0..images.len() {
            for j in 0..i {
                assert!(
                    mean_abs_diff(&images[i], &images[j]) > 0.02,
                    "images {i} and {j} are near-identical"
                );
            }
        }
        assert_ne!(make(2, 0, 32), a, "the seed changes the set");
        assert_eq!(make(1, 3, 16).len(), 3 * 16 * 16);
    }
}

#[test]
fn edges_are_anti_aliased() {
    // A hard-edged renderer would only produce a handful of distinct values per channel.
    let img = tree_image(0, 0, 32);
    let mut levels: Vec<i32> = img.iter().map(|v| (v * 1000.0) as i32).collect();
    levels.sort_unstable();
    levels.dedup();
    assert!(levels.len() > 100, "only {} distinct values", levels.len());
}

#[test]
fn datasets_build_from_generators() {
    let t = Dataset::trees(5, 16, 3);
    assert_eq!((t.len(), t.channels(), t.size()), (5, 3, 16));
    assert_eq!(t.image(4).unwrap(), tree_image(3, 4, 16).as_slice());
    assert_eq!(
        Dataset::generic(2, 16, 3).image(1).unwrap(),
        generic_image(3, 1, 16).as_slice()
    );
}
