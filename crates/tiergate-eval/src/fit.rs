//! A tiny L2-regularised logistic regression, fitted by Newton's method: enough to learn the
//! complexity weights from labelled prompts (`examples/eval_routing.rs --fit`) deterministically,
//! without a numerical crate.

use tiergate_router::complexity::{ComplexityConfig, TEXT_SIGNAL_COUNT, TextSignals, TextWeights};
use tiergate_router::features::PromptFeatures;

/// Fitted logistic model: `p = sigmoid(bias + weights . x)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticModel {
    pub bias: f64,
    pub weights: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error("no training rows")]
    Empty,
    #[error("row {0} has a different number of features than row 0")]
    Ragged(usize),
    #[error("labels and rows differ in length ({labels} labels, {rows} rows)")]
    LabelCount { labels: usize, rows: usize },
    #[error("the Newton system became singular; raise the L2 penalty")]
    Singular,
}

/// How to fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// Penalty on the squared weights (not the bias), in units of "rows".
    pub l2: f64,
    /// Newton steps at most; fitting stops earlier when no weight moves by more than 1e-9.
    pub max_iterations: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            l2: 1.0,
            max_iterations: 50,
        }
    }
}

// Index loops read like the matrix algebra they implement.
#[allow(clippy::needless_range_loop)]
/// Fits `labels` (each in `[0, 1]`) from `rows`, each row counted `sample_weights[i]` times
/// (all 1 when `None`).
pub fn fit_logistic(
    rows: &[Vec<f64>],
    labels: &[f64],
    sample_weights: Option<&[f64]>,
    options: &FitOptions,
) -> Result<LogisticModel, FitError> {
    let dims = rows.first().ok_or(FitError::Empty)?.len();
    if labels.len() != rows.len() || sample_weights.is_some_and(|w| w.len() != rows.len()) {
        return Err(FitError::LabelCount {
            labels: labels.len(),
            rows: rows.len(),
        });
    }
    let (l2, max_iterations) = (options.l2, options.max_iterations);
    if let Some(i) = rows.iter().position(|r| r.len() != dims) {
        return Err(FitError::Ragged(i));
    }
    // theta[0] is the bias; x is extended with a leading 1.
    let k = dims + 1;
    let mut theta = vec![0.0; k];
    for _ in 0..max_iterations {
        let mut gradient = vec![0.0; k];
        let mut hessian = vec![vec![0.0; k]; k];
        for (i, (row, &y)) in rows.iter().zip(labels).enumerate() {
            let x = |j: usize| if j == 0 { 1.0 } else { row[j - 1] };
            let z: f64 = (0..k).map(|j| theta[j] * x(j)).sum();
            let p = tiergate_router::complexity::sigmoid(z);
            let count = sample_weights.map_or(1.0, |w| w[i]);
            let w = count * (p * (1.0 - p)).max(1e-12);
            for a in 0..k {
                gradient[a] += count * (p - y) * x(a);
                for b in 0..=a {
                    hessian[a][b] += w * x(a) * x(b);
                }
            }
        }
        for a in 1..k {
            gradient[a] += l2 * theta[a];
            hessian[a][a] += l2;
        }
        for a in 0..k {
            for b in 0..a {
                hessian[b][a] = hessian[a][b];
            }
        }
        let step = solve(hessian, gradient).ok_or(FitError::Singular)?;
        let mut largest: f64 = 0.0;
        for (t, s) in theta.iter_mut().zip(&step) {
            *t -= s;
            largest = largest.max(s.abs());
        }
        if largest < 1e-9 {
            break;
        }
    }
    Ok(LogisticModel {
        bias: theta[0],
        weights: theta[1..].to_vec(),
    })
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting.
#[allow(clippy::needless_range_loop)]
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let factor = a[row][col] / a[col][col];
            for c in col..n {
                a[row][c] -= factor * a[col][c];
            }
            b[row] -= factor * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let rest: f64 = (row + 1..n).map(|c| a[row][c] * x[c]).sum();
        x[row] = (b[row] - rest) / a[row][row];
    }
    Some(x)
}

/// The text signals of a prompt as a training row.
pub fn text_signal_row(prompt: &str) -> Vec<f64> {
    TextSignals::from_features(&PromptFeatures::extract(prompt))
        .values
        .to_vec()
}

/// The complexity config of a fitted model.
pub fn config_from_model(model: &LogisticModel) -> Option<ComplexityConfig> {
    let weights: [f64; TEXT_SIGNAL_COUNT] = model.weights.clone().try_into().ok()?;
    Some(ComplexityConfig {
        bias: model.bias,
        weights: TextWeights::from_array(weights),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn recovers_the_direction_of_a_separating_feature() {
        // Label is 1 exactly when x0 > 0.5; x1 is noise.
        let rows: Vec<Vec<f64>> = (0..200)
            .map(|i| vec![f64::from(i % 20) / 19.0, f64::from((i * 7) % 13) / 12.0])
            .collect();
        let labels: Vec<f64> = rows
            .iter()
            .map(|r| f64::from(u8::from(r[0] > 0.5)))
            .collect();
        let model = fit_logistic(
            &rows,
            &labels,
            None,
            &FitOptions {
                l2: 0.1,
                max_iterations: 50,
            },
        )
        .unwrap();
        assert!(model.weights[0] > 5.0, "{model:?}");
        assert!(
            model.weights[0].abs() > 5.0 * model.weights[1].abs(),
            "{model:?}"
        );
    }

    #[test]
    fn rejects_bad_shapes() {
        let o = FitOptions::default();
        assert_eq!(fit_logistic(&[], &[], None, &o), Err(FitError::Empty));
        assert_eq!(
            fit_logistic(&[vec![1.0], vec![1.0, 2.0]], &[0.0, 1.0], None, &o),
            Err(FitError::Ragged(1))
        );
        assert!(matches!(
            fit_logistic(&[vec![1.0]], &[0.0, 1.0], None, &o),
            Err(FitError::LabelCount { .. })
        ));
        assert!(matches!(
            fit_logistic(&[vec![1.0]], &[0.0], Some(&[1.0, 1.0]), &o),
            Err(FitError::LabelCount { .. })
        ));
    }
}
