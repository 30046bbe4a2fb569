//! The sentence-transformers modules after pooling (`modules.json`: `Dense`, a `Normalize`
//! between dense layers), run on the host in f32 on the pooled vectors of any engine: a
//! dense layer is one small matrix-vector product per text (LaBSE's is 768 x 768).
use candle_core::{DType, Device};
use souk_encoder_core::{Activation, EncoderError, HeadModule, l2_normalize};

enum Step {
    Dense {
        /// Row-major (out, in).
        weight: Vec<f32>,
        bias: Vec<f32>,
        inputs: usize,
        activation: Activation,
    },
    Normalize,
}

/// The modules after pooling, loaded.
pub(crate) struct Head {
    steps: Vec<Step>,
    /// The length of what comes out: the last dense layer's outputs, else the input's.
    dimension: usize,
}

impl Head {
    /// Loads each dense layer's weights and checks that the sizes chain from `hidden`.
    ///
    /// # Errors
    /// A weights file that does not load or does not match its config, or a layer whose
    /// inputs are not the previous one's outputs, naming the file.
    pub(crate) fn load(modules: &[HeadModule], hidden: usize) -> Result<Self, EncoderError> {
        let mut steps = Vec::with_capacity(modules.len());
        let mut dimension = hidden;
        for module in modules {
            match module {
                HeadModule::Normalize => steps.push(Step::Normalize),
                HeadModule::Dense(dense) => {
                    let at = dense.weights.display();
                    if dense.in_features != dimension {
                        return Err(EncoderError::Model(format!(
                            "{at}: a dense layer of {} inputs after vectors of {dimension}",
                            dense.in_features
                        )));
                    }
                    let tensors = candle_core::safetensors::load(&dense.weights, &Device::Cpu)
                        .map_err(|e| EncoderError::Model(format!("{at}: {e}")))?;
                    let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>, EncoderError> {
                        let t = tensors.get(name).ok_or_else(|| {
                            EncoderError::Model(format!("{at}: no tensor {name}"))
                        })?;
                        if t.dims() != shape {
                            return Err(EncoderError::Model(format!(
                                "{at}: {name} is {:?}, the config says {shape:?}",
                                t.dims()
                            )));
                        }
                        t.to_dtype(DType::F32)
                            .and_then(|t| t.flatten_all())
                            .and_then(|t| t.to_vec1::<f32>())
                            .map_err(|e| EncoderError::Model(format!("{at}: {name}: {e}")))
                    };
                    let weight = read("linear.weight", &[dense.out_features, dense.in_features])?;
                    let bias = if dense.bias {
                        read("linear.bias", &[dense.out_features])?
                    } else {
                        vec![0.0; dense.out_features]
                    };
                    steps.push(Step::Dense {
                        weight,
                        bias,
                        inputs: dense.in_features,
                        activation: dense.activation,
                    });
                    dimension = dense.out_features;
                }
            }
        }
        Ok(Self { steps, dimension })
    }

    pub(crate) fn dimension(&self) -> usize {
        self.dimension
    }

    /// Runs every step on each pooled vector, in place.
    pub(crate) fn apply(&self, vectors: &mut [Vec<f32>]) {
        for vector in vectors {
            for step in &self.steps {
                match step {
                    Step::Normalize => l2_normalize(vector),
                    Step::Dense {
                        weight,
                        bias,
                        inputs,
                        activation,
                    } => {
                        let out: Vec<f32> = weight
                            .chunks_exact(*inputs)
                            .zip(bias)
                            .map(|(row, b)| {
                                let z = souk_lanes::dot(row, vector) + b;
                                match activation {
                                    Activation::Identity => z,
                                    Activation::Tanh => z.tanh(),
                                    Activation::Relu => z.max(0.0),
                                    Activation::Sigmoid => 1.0 / (1.0 + (-z).exp()),
                                }
                            })
                            .collect();
                        *vector = out;
                    }
                }
            }
        }
    }
}
