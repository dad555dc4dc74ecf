//! Conversions between candle tensors and the run store's [`StoredTensor`]s: the store keeps
//! plain `f32` values and needs no tensor library, the trainer computes with candle.

use candle_core::{DType, Device, Tensor};
use store::{StoredTensor, TensorMap};

/// `tensor` as the store keeps it: copied to the CPU as `f32`, row-major.
pub fn to_stored(tensor: &Tensor) -> candle_core::Result<StoredTensor> {
    let values = tensor
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    StoredTensor::new(tensor.dims().to_vec(), values)
        .ok_or_else(|| candle_core::Error::Msg("tensor data does not match its shape".into()))
}

/// A stored tensor as a candle tensor on `device`.
pub fn to_candle(tensor: &StoredTensor, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(tensor.values(), tensor.shape(), device)
}

/// Every tensor of `tensors` as the store keeps it.
pub fn map_to_stored<'a>(
    tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>,
) -> candle_core::Result<TensorMap> {
    tensors
        .into_iter()
        .map(|(name, t)| Ok((name.clone(), to_stored(t)?)))
        .collect()
}

/// Every stored tensor as a candle tensor on `device`, in whichever map the caller keeps.
pub fn map_to_candle<M: FromIterator<(String, Tensor)>>(
    tensors: &TensorMap,
    device: &Device,
) -> candle_core::Result<M> {
    tensors
        .iter()
        .map(|(name, t)| Ok((name.clone(), to_candle(t, device)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_shape_and_values_of_strided_and_f64_tensors() {
        let dev = Device::Cpu;
        let t = Tensor::arange(0f64, 6.0, &dev)
            .and_then(|t| t.reshape((2, 3)))
            .and_then(|t| t.t())
            .unwrap();
        let stored = to_stored(&t).unwrap();
        assert_eq!(stored.shape(), &[3, 2]);
        assert_eq!(stored.values(), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let back = to_candle(&stored, &dev).unwrap();
        assert_eq!(
            back.to_vec2::<f32>().unwrap(),
            vec![vec![0.0, 3.0], vec![1.0, 4.0], vec![2.0, 5.0]]
        );
        let scalar = to_stored(&Tensor::new(3.5f32, &dev).unwrap()).unwrap();
        assert_eq!(
            to_candle(&scalar, &dev)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            3.5
        );
    }
}
