//! Peer groups by behaviour: each user becomes a point (what their events look like through a model's
//! encoding), and k-means puts users that behave alike in one group.
//!
//! A user's point is, in model order: the mean of each scaled numeric input, the share of events with
//! each binary input set, and per categorical input the share of events with each category (apps,
//! browsers, countries, …). So two users who use the same apps from the same places on the same devices
//! at the same volumes are close, whatever their names.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::encode::{EncodeError, FeatureEncoder};

/// A user's behaviour as a point: see the module docs. Empty when `rows` is empty.
pub fn signature(encoder: &FeatureEncoder, rows: &arrow::array::RecordBatch) -> Result<Vec<f32>, EncodeError> {
    let e = encoder.encode(rows)?;
    let (nn, nb, nc) = encoder.shape();
    let cards = encoder.cardinalities();
    if e.rows == 0 {
        return Ok(Vec::new());
    }
    let n = e.rows as f32;
    let mut point = vec![0f32; nn + nb + cards.iter().sum::<usize>()];
    for r in 0..e.rows {
        for (p, v) in point[..nn].iter_mut().zip(&e.numeric[r * nn..(r + 1) * nn]) {
            *p += v / n;
        }
        for (p, v) in point[nn..nn + nb].iter_mut().zip(&e.binary[r * nb..(r + 1) * nb]) {
            *p += v / n;
        }
        let mut offset = nn + nb;
        for (j, card) in cards.iter().enumerate().take(nc) {
            let category = usize::try_from(e.categorical[r * nc + j]).unwrap_or(0).min(card.saturating_sub(1));
            point[offset + category] += 1.0 / n;
            offset += card;
        }
    }
    Ok(point)
}

fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Puts `points` into at most `k` groups (k-means, k-means++ start, seeded: the same points and seed give
/// the same groups). Returns each point's group, numbered by each group's first point (group 0 holds the
/// first point), so that the numbering does not depend on the start.
pub fn kmeans(points: &[Vec<f32>], k: usize, seed: u64) -> Vec<usize> {
    let n = points.len();
    if n == 0 || k == 0 {
        return vec![0; n];
    }
    let k = k.min(n);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // k-means++: each next centre drawn with probability proportional to its squared distance.
    let mut centres: Vec<Vec<f32>> = vec![points[rng.random_range(0..n)].clone()];
    let mut nearest: Vec<f32> = points.iter().map(|p| distance(p, &centres[0])).collect();
    while centres.len() < k {
        let total: f64 = nearest.iter().map(|d| f64::from(*d)).sum();
        if total <= 0.0 {
            break; // every point sits on a centre: fewer distinct behaviours than k
        }
        let mut x = rng.random_range(0.0..total);
        let mut pick = n - 1;
        for (i, d) in nearest.iter().enumerate() {
            x -= f64::from(*d);
            if x < 0.0 {
                pick = i;
                break;
            }
        }
        centres.push(points[pick].clone());
        for (i, p) in points.iter().enumerate() {
            nearest[i] = nearest[i].min(distance(p, &centres[centres.len() - 1]));
        }
    }
    let dims = points[0].len();
    let mut assign = vec![usize::MAX; n];
    for _ in 0..100 {
        let mut changed = false;
        for (i, p) in points.iter().enumerate() {
            let best = (0..centres.len())
                .min_by(|a, b| distance(p, &centres[*a]).total_cmp(&distance(p, &centres[*b])))
                .unwrap_or(0);
            if assign[i] != best {
                assign[i] = best;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        let mut sums = vec![vec![0f32; dims]; centres.len()];
        let mut counts = vec![0usize; centres.len()];
        for (p, &c) in points.iter().zip(&assign) {
            counts[c] += 1;
            for (s, v) in sums[c].iter_mut().zip(p) {
                *s += v;
            }
        }
        for (c, (sum, count)) in sums.into_iter().zip(counts).enumerate() {
            if count > 0 {
                centres[c] = sum.into_iter().map(|s| s / count as f32).collect();
            }
        }
    }
    // Renumber by first appearance.
    let mut renumber = vec![usize::MAX; centres.len()];
    let mut next = 0;
    assign
        .into_iter()
        .map(|c| {
            if renumber[c] == usize::MAX {
                renumber[c] = next;
                next += 1;
            }
            renumber[c]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmeans_finds_separated_groups_and_is_repeatable() {
        // Three clouds of ten points each, far apart, interleaved.
        let points: Vec<Vec<f32>> = (0..30)
            .map(|i| {
                let c = (i % 3) as f32 * 10.0;
                vec![c + (i as f32 * 0.37).sin() * 0.5, c + (i as f32 * 0.71).cos() * 0.5]
            })
            .collect();
        let groups = kmeans(&points, 3, 7);
        for (i, g) in groups.iter().enumerate() {
            assert_eq!(*g, i % 3, "point {i} is in the cloud {}", i % 3);
        }
        assert_eq!(kmeans(&points, 3, 7), kmeans(&points, 3, 99), "the numbering does not depend on the seed");
        // More groups than distinct points: no empty group, nothing panics.
        assert_eq!(kmeans(&[vec![1.0], vec![1.0]], 5, 1), vec![0, 0]);
        assert!(kmeans(&[], 3, 1).is_empty());
    }
}
