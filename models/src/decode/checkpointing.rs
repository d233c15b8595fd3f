//! Gradient checkpointing of decoder layers: a layer's forward keeps only its input for
//! backward, and backward recomputes the layer from that input.
//!
//! candle's autograd keeps every intermediate of the forward alive until `backward` (the
//! attention scores, the MLP's 4.9x-wide activations, the norms' inputs) — at training sizes
//! that, not the weights, is what fills memory. A checkpointed layer runs its forward, keeps
//! the output's values and lets its graph go; the output is tied to the layer's input by a
//! [`CustomOp2`] whose backward re-runs the layer on that input (with the same weights),
//! backpropagates the incoming gradient through it, returns the input's gradient to candle's
//! backward pass and deposits the weights' gradients in [`Checkpointing`], where the trainer
//! collects them beside the ones candle's pass returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, TensorId, Var};

/// The gradients recomputed layers give to the trained parameters, until the trainer takes
/// them.
pub struct Checkpointing {
    /// The trained parameters (variables): only their gradients are kept.
    params: Vec<Tensor>,
    grads: Mutex<HashMap<TensorId, Tensor>>,
}

impl Checkpointing {
    /// For a model whose trained parameters are `params` (the variables the optimizer
    /// steps).
    pub fn new(params: Vec<Tensor>) -> Arc<Self> {
        Arc::new(Self {
            params,
            grads: Mutex::new(HashMap::new()),
        })
    }

    /// The gradient the recomputed layers gave `param` since the last call (summed), removed.
    pub fn take(&self, param: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(self.lock()?.remove(&param.id()))
    }

    /// Forgets every deposited gradient (a backward pass that was abandoned half-way).
    pub fn clear(&self) -> candle_core::Result<()> {
        self.lock()?.clear();
        Ok(())
    }

    fn deposit(&self, store: &GradStore) -> candle_core::Result<()> {
        let mut grads = self.lock()?;
        for p in &self.params {
            if let Some(g) = store.get(p) {
                let sum = match grads.remove(&p.id()) {
                    Some(acc) => (acc + g)?,
                    None => g.clone(),
                };
                grads.insert(p.id(), sum);
            }
        }
        Ok(())
    }

    fn lock(&self) -> candle_core::Result<MutexGuard<'_, HashMap<TensorId, Tensor>>> {
        self.grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("checkpointed gradients: lock poisoned".into()))
    }
}

/// A layer as a function of its input alone (everything else it reads is captured).
pub type LayerFn = dyn Fn(&Tensor) -> candle_core::Result<Tensor> + Send + Sync;

/// `layer(xs)`, keeping for backward only `xs` (and a copy of the output): the layer is
/// recomputed when the gradient reaches it. `layer` must be deterministic.
pub fn checkpointed(
    xs: &Tensor,
    layer: Arc<LayerFn>,
    grads: &Arc<Checkpointing>,
) -> candle_core::Result<Tensor> {
    // The forward with its graph, dropped at once: only the values are kept.
    let out = layer(&xs.detach())?.contiguous()?.detach();
    // An input that tracks nothing (frozen embeddings) would leave the op out of the graph,
    // and the layer's own weights without gradients: make it a leaf that tracks.
    let xs = if xs.track_op() {
        xs.clone()
    } else {
        Var::from_tensor(xs)?.as_tensor().clone()
    };
    xs.apply_op2(
        &out,
        Recompute {
            layer,
            grads: grads.clone(),
        },
    )
}

/// out = (the values of) layer(input); backward recomputes the layer.
struct Recompute {
    layer: Arc<LayerFn>,
    grads: Arc<Checkpointing>,
}

impl CustomOp2 for Recompute {
    fn name(&self) -> &'static str {
        "checkpointed-layer"
    }

    /// The output is the second argument's values (computed before the op).
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        out: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if layout.contiguous_offsets() != Some((0, layout.shape().elem_count())) {
            candle_core::bail!("checkpointed-layer: the layer's output is not contiguous");
        }
        Ok((out.clone(), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        out: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        if layout.contiguous_offsets() != Some((0, layout.shape().elem_count())) {
            candle_core::bail!("checkpointed-layer: the layer's output is not contiguous");
        }
        Ok((out.try_clone(layout)?, layout.shape().clone()))
    }

    fn bwd(
        &self,
        input: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let x = Var::from_tensor(&input.detach())?;
        let y = (self.layer)(x.as_tensor())?;
        let store = (y * grad.detach())?.sum_all()?.backward()?;
        self.grads.deposit(&store)?;
        Ok((store.get(x.as_tensor()).cloned(), None))
    }
}
