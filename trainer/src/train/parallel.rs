//! Data-parallel training steps on the CPU. candle's own threading does not pay off on a small
//! model (a `small` LoRA step takes as long with candle on 1 thread as on 2), so the batch is
//! split into shards whose forward and backward passes run on their own threads, and the
//! gradients are averaged weighted by shard size. The shards share the cores with candle's
//! thread pools: [`shard_count`] gives each shard `cores / candle threads` of them, and the
//! `diffit` binary runs `train` and `pretrain` with candle on one thread
//! ([`prefer_data_parallel`]), which made a `small` LoRA step 1.85× faster on 2 cores.
//!
//! Each shard draws its timesteps, noise and dropout masks from its own fork of the caller's
//! RNG, forked in shard order: a step is deterministic for a given shard count, which is why
//! exact resume holds "for the same seed and thread count".

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, TensorId, Var};

use model::diffusion::{ddpm_loss_labeled, BatchLabels, NoiseSchedule};
use model::rng::Rng;
use model::DiffiT;

use super::collective::{local_ranks, Collective, Reader, Wait, Writer};
use super::error::TrainError;
use super::optim::Gradients;

/// The most shards one process splits a step into by default.
pub const MAX_SHARDS: usize = 8;

/// How many shards a batch of `batch` images is split into, over all ranks of `collective`:
/// `configured` (`training.data_shards`) when set, else each process's cores divided by
/// candle's thread count and by the job's processes on this machine (at most
/// [`MAX_SHARDS`]) times the ranks; one per rank off the CPU. Never more than `batch`.
pub fn shard_count(
    batch: usize,
    device: &Device,
    configured: Option<usize>,
    collective: &dyn Collective,
) -> usize {
    let total = configured.unwrap_or_else(|| {
        let per_rank = if device.is_cpu() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let per_shard = candle_core::utils::get_num_threads().max(1);
            // A launcher that binds each process to its own cores leaves `cores` already
            // divided; one that does not leaves every process seeing all of them.
            let sharing = if collective.ranks() > 1 && !bound_to_fewer_cores() {
                local_ranks()
            } else {
                1
            };
            (cores / per_shard / sharing).clamp(1, MAX_SHARDS)
        } else {
            1
        };
        per_rank * collective.ranks()
    });
    total.min(batch).max(1)
}

/// True when this process may run on fewer cores than the machine has (an affinity mask,
/// as `mpirun --bind-to core` sets).
fn bound_to_fewer_cores() -> bool {
    let allowed = std::thread::available_parallelism().map_or(1, |n| n.get());
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| count_cpu_list(s.trim()));
    online.is_some_and(|n| allowed < n)
}

/// The number of CPUs in a kernel CPU list such as `0-3,8,10-11`.
fn count_cpu_list(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => {
                b.parse::<usize>()
                    .ok()?
                    .checked_sub(a.parse::<usize>().ok()?)?
                    + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// Runs candle's CPU ops on one thread (`RAYON_NUM_THREADS` and `CANDLE_NUM_THREADS` = 1) unless
/// the user set either variable, so that [`shard_count`] splits batches over every core. Call
/// it first thing in `main`, before any thread exists: it changes the process environment.
pub fn prefer_data_parallel() {
    let user_set = ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"]
        .iter()
        .any(|k| std::env::var_os(k).is_some());
    if !user_set {
        std::env::set_var("RAYON_NUM_THREADS", "1");
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// The gradients of one step, by parameter (the sum over its shards).
#[derive(Debug, Default)]
pub struct ParamGrads(HashMap<TensorId, Tensor>);

impl Gradients for ParamGrads {
    fn of(&self, var: &Var) -> Option<&Tensor> {
        self.0.get(&var.as_tensor().id())
    }
}

/// One shard's share of a step: its image count, mean loss and gradients (in `params` order).
struct ShardResult {
    index: usize,
    len: usize,
    loss: f64,
    grads: Vec<Option<Tensor>>,
}

/// The batch's DDPM loss (mean over all images) and its gradients for `params`, the batch
/// split into `shards` shards over the ranks of `collective` (global shard `k` on rank
/// `k mod ranks`, each of this rank's shards on a thread of its own), each image conditioned
/// on its label in `labels` if given (each shard draws its own images' label dropout). Every
/// rank returns the same values, bit for bit those of one process with `shards` shards; with
/// one shard this is exactly `ddpm_loss_labeled` + `backward` on `rng`, on every rank.
#[allow(clippy::too_many_arguments)]
pub fn loss_and_grads(
    model: &DiffiT,
    x: &Tensor,
    labels: Option<BatchLabels>,
    schedule: &NoiseSchedule,
    rng: &mut Rng,
    shards: usize,
    params: &[(String, Var)],
    collective: &dyn Collective,
) -> Result<(f64, ParamGrads), TrainError> {
    let batch = x.dim(0)?;
    let shards = shards.clamp(1, batch.max(1));
    if labels.is_some_and(|l| l.classes.len() != batch) {
        return Err(TrainError::Internal(format!(
            "a batch of {batch} images needs {batch} labels"
        )));
    }
    let (ranks, rank) = (collective.ranks(), collective.rank());
    // One shard draws from the caller's stream itself (not a fork), so every rank computes it
    // (a batch of one image): the ranks' streams must advance alike.
    if shards == 1 {
        let loss = ddpm_loss_labeled(model, x, labels, schedule, rng)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        let store = loss.backward()?;
        return Ok((value, ParamGrads(collect_grads(params, &store))));
    }
    // Near-equal contiguous shards, the first ones one image larger; every rank forks every
    // shard's stream, in shard order, and keeps its own shards'.
    let mut parts = Vec::new();
    let mut start = 0;
    for k in 0..shards {
        let len = batch / shards + usize::from(k < batch % shards);
        let shard_rng = rng.fork();
        if k % ranks == rank {
            let part_labels = labels.map(|l| BatchLabels {
                classes: &l.classes[start..start + len],
                dropout: l.dropout,
            });
            parts.push((k, x.narrow(0, start, len)?, part_labels, len, shard_rng));
        }
        start += len;
    }
    let local: Vec<candle_core::Result<ShardResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|(index, part, part_labels, len, mut shard_rng)| {
                s.spawn(move || {
                    let loss =
                        ddpm_loss_labeled(model, &part, part_labels, schedule, &mut shard_rng)?;
                    let value = f64::from(loss.to_scalar::<f32>()?);
                    let store = loss.backward()?;
                    Ok(ShardResult {
                        index,
                        len,
                        loss: value,
                        grads: collect_grads_in_order(params, &store),
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(candle_core::Error::Msg("a training thread panicked".into()))
                })
            })
            .collect()
    });
    let local = local.into_iter().collect::<candle_core::Result<Vec<_>>>()?;
    let results = if ranks == 1 {
        local
    } else {
        exchange(collective, local, shards, params, x.device())?
    };
    combine(params, results)
}

/// Each parameter's gradient in `store`, by tensor id: the one-shard step's result, handed to
/// the optimizer as candle left it (no copy, no sum), so that a one-shard run is exactly what
/// it was before shards existed. [`collect_grads_in_order`] serves the shards, whose results
/// are exchanged and summed in `params` order.
fn collect_grads(params: &[(String, Var)], store: &GradStore) -> HashMap<TensorId, Tensor> {
    params
        .iter()
        .filter_map(|(_, v)| Some((v.as_tensor().id(), store.get(v.as_tensor())?.clone())))
        .collect()
}

/// Each parameter's gradient in `store`, in `params` order.
fn collect_grads_in_order(params: &[(String, Var)], store: &GradStore) -> Vec<Option<Tensor>> {
    params
        .iter()
        .map(|(_, v)| store.get(v.as_tensor()).cloned())
        .collect()
}

/// Every shard's result on every rank, in shard order: each rank sends its own shards and
/// decodes the others'.
fn exchange(
    collective: &dyn Collective,
    local: Vec<ShardResult>,
    shards: usize,
    params: &[(String, Var)],
    device: &Device,
) -> Result<Vec<ShardResult>, TrainError> {
    const WHAT: &str = "exchanging gradients";
    let mut w = Writer::new();
    w.u64(local.len() as u64);
    for shard in &local {
        w.u64(shard.index as u64)
            .u64(shard.len as u64)
            .f64(shard.loss);
        for g in &shard.grads {
            match g {
                Some(g) => {
                    w.u64(1);
                    w.tensor(g)?;
                }
                None => {
                    w.u64(0);
                }
            }
        }
    }
    let gathered = collective.all_gather(WHAT, Wait::Bounded, &w.finish())?;
    let mut slots: Vec<Option<ShardResult>> = (0..shards).map(|_| None).collect();
    for (from, message) in gathered.iter().enumerate() {
        if from == collective.rank() {
            continue;
        }
        let mut r = Reader::new(message, WHAT);
        for _ in 0..r.len()? {
            let index = r.len()?;
            let len = r.len()?;
            let loss = r.f64()?;
            let mut grads = Vec::with_capacity(params.len());
            for _ in params {
                grads.push(match r.u64()? {
                    0 => None,
                    _ => Some(r.tensor(device)?),
                });
            }
            place(
                &mut slots,
                index,
                from,
                ShardResult {
                    index,
                    len,
                    loss,
                    grads,
                },
            )?;
        }
        r.end()?;
    }
    for shard in local {
        let (index, from) = (shard.index, collective.rank());
        place(&mut slots, index, from, shard)?;
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(k, s)| {
            s.ok_or_else(|| {
                TrainError::Distributed(format!("{WHAT}: no rank sent shard {k} of {shards}"))
            })
        })
        .collect()
}

/// Puts shard `index` (from rank `from`) into its slot, refusing one out of range or twice.
fn place(
    slots: &mut [Option<ShardResult>],
    index: usize,
    from: usize,
    shard: ShardResult,
) -> Result<(), TrainError> {
    let shards = slots.len();
    match slots.get_mut(index) {
        Some(slot @ None) => {
            *slot = Some(shard);
            Ok(())
        }
        Some(Some(_)) => Err(TrainError::Distributed(format!(
            "exchanging gradients: shard {index} arrived twice (again from rank {from})"
        ))),
        None => Err(TrainError::Distributed(format!(
            "exchanging gradients: rank {from} sent shard {index} of a step of {shards}"
        ))),
    }
}

/// The step's loss and gradients from its shards (in shard order): each shard weighted by its
/// share of the images, summed shard after shard.
fn combine(
    params: &[(String, Var)],
    results: Vec<ShardResult>,
) -> Result<(f64, ParamGrads), TrainError> {
    let total = results.iter().map(|r| r.len).sum::<usize>() as f64;
    let loss = results.iter().map(|r| r.len as f64 * r.loss).sum::<f64>() / total;
    let mut combined = HashMap::new();
    for (i, (_, var)) in params.iter().enumerate() {
        let mut sum: Option<Tensor> = None;
        for r in &results {
            if let Some(g) = r.grads.get(i).and_then(Option::as_ref) {
                let weighted = (g * (r.len as f64 / total))?;
                sum = Some(match sum {
                    Some(acc) => (acc + weighted)?,
                    None => weighted,
                });
            }
        }
        if let Some(g) = sum {
            combined.insert(var.as_tensor().id(), g);
        }
    }
    Ok((loss, ParamGrads(combined)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::collective::loopback::Loopback;
    use crate::train::collective::SingleProcess;
    use candle_core::DType;
    use candle_nn::{VarBuilder, VarMap};
    use model::diffusion::ddpm_loss;
    use model::{init_base_tensors, Config};

    /// A tiny model whose parameters all train, with a non-zero head so gradients are real.
    fn trainable() -> (DiffiT, Vec<(String, Var)>) {
        let cfg = Config::tiny();
        let dev = Device::Cpu;
        let mut rng = Rng::new(1);
        let mut init = init_base_tensors(&cfg, &mut rng, &dev).unwrap();
        let w = init["final_layer.linear.weight"].clone();
        init.insert(
            "final_layer.linear.weight".into(),
            (rng.normal_tensor(w.shape(), &dev).unwrap() * 0.1).unwrap(),
        );
        let map = VarMap::new();
        {
            let mut data = map.data().lock().unwrap();
            for (name, t) in &init {
                data.insert(name.clone(), Var::from_tensor(t).unwrap());
            }
        }
        let model =
            DiffiT::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &dev), None).unwrap();
        let params = map
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        (model, params)
    }

    /// A batch of 5 images in [-1, 1].
    fn batch() -> Tensor {
        Rng::new(2)
            .normal_tensor((5, 3, 16, 16), &Device::Cpu)
            .unwrap()
            .clamp(-1f32, 1f32)
            .unwrap()
    }

    #[test]
    fn sharded_gradients_are_the_size_weighted_mean_of_the_shards() {
        let (model, params) = trainable();
        let x = batch();
        let schedule = NoiseSchedule::default();
        let step = |shards| {
            let mut rng = Rng::new(3);
            loss_and_grads(
                &model,
                &x,
                None,
                &schedule,
                &mut rng,
                shards,
                &params,
                &SingleProcess,
            )
            .unwrap()
        };
        let (loss, grads) = step(2);

        // The same shards by hand: images 0..3 and 3..5, each on its fork of the RNG.
        let mut rng = Rng::new(3);
        let (mut r0, mut r1) = (rng.fork(), rng.fork());
        let l0 = ddpm_loss(&model, &x.narrow(0, 0, 3).unwrap(), &schedule, &mut r0).unwrap();
        let l1 = ddpm_loss(&model, &x.narrow(0, 3, 2).unwrap(), &schedule, &mut r1).unwrap();
        let v0 = f64::from(l0.to_scalar::<f32>().unwrap());
        let v1 = f64::from(l1.to_scalar::<f32>().unwrap());
        assert!((loss - (3.0 * v0 + 2.0 * v1) / 5.0).abs() < 1e-9);
        let (g0, g1) = (l0.backward().unwrap(), l1.backward().unwrap());
        let mut checked = 0;
        for (name, var) in &params {
            let t = var.as_tensor();
            let want = ((g0.get(t).unwrap() * 0.6).unwrap() + (g1.get(t).unwrap() * 0.4).unwrap())
                .unwrap();
            let got = grads.of(var).unwrap();
            let diff = model::max_abs_difference(got, &want).unwrap();
            assert!(diff < 1e-6, "{name}: {diff}");
            checked += 1;
        }
        assert_eq!(checked, params.len());

        // One shard is the plain loss on the caller's RNG.
        let (single, _) = step(1);
        let plain = ddpm_loss(&model, &x, &schedule, &mut Rng::new(3)).unwrap();
        assert_eq!(single, f64::from(plain.to_scalar::<f32>().unwrap()));
    }

    /// The step's loss and every gradient's values, for bitwise comparison.
    fn step_bits(
        model: &DiffiT,
        params: &[(String, Var)],
        x: &Tensor,
        shards: usize,
        collective: &dyn Collective,
    ) -> (u64, Vec<Vec<u32>>) {
        let (loss, grads) = loss_and_grads(
            model,
            x,
            None,
            &NoiseSchedule::default(),
            &mut Rng::new(3),
            shards,
            params,
            collective,
        )
        .unwrap();
        let bits = params
            .iter()
            .map(|(_, v)| {
                let g = grads.of(v).unwrap().flatten_all().unwrap();
                g.to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|f| f.to_bits())
                    .collect()
            })
            .collect();
        (loss.to_bits(), bits)
    }

    #[test]
    fn ranks_together_give_one_process_bit_for_bit() {
        let (model, params) = trainable();
        let x = batch();
        // 2 and 3 shards over 2 ranks (rank 0 computes shards 0 and 2 of 3), and a step of
        // one shard, which each rank computes itself.
        for shards in [2, 3, 1] {
            let single = step_bits(&model, &params, &x, shards, &SingleProcess);
            let ranks = Loopback::job(2);
            let per_rank: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = ranks
                    .iter()
                    .map(|c| s.spawn(|| step_bits(&model, &params, &x, shards, c)))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (rank, got) in per_rank.iter().enumerate() {
                assert!(
                    *got == single,
                    "{shards} shards: rank {rank} differs from one process"
                );
            }
        }
    }

    #[test]
    fn shard_counts_stay_within_the_batch_and_the_cores() {
        let cpu = Device::Cpu;
        assert_eq!(shard_count(1, &cpu, None, &SingleProcess), 1);
        let n = shard_count(64, &cpu, None, &SingleProcess);
        assert!((1..=MAX_SHARDS).contains(&n));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(n == 1 || n * candle_core::utils::get_num_threads() <= cores);
        // A configured count is the total over every rank, capped by the batch.
        let job = Loopback::job(2);
        assert_eq!(shard_count(64, &cpu, Some(3), &job[0]), 3);
        assert_eq!(shard_count(2, &cpu, Some(3), &job[1]), 2);
        assert!(shard_count(64, &cpu, None, &job[0]) >= 2);
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("x"), None);
    }
}
