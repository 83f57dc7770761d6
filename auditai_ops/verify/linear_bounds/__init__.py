"""Sound bounds for LOW-DIMENSIONAL input perturbations by forward linear bound propagation.

The perturbation is t in a per-sample box [t_low, t_high] of k = 1..3 dimensions, and the
network input is affine in t: x(t) = c + sum_j t_j G_j (latent mode: c = z, G = the direction
rows, see `latent_line_input`; pixel mode: the same latent input, with the decoder's layers in
front of the classifier's). Every neuron is bounded by two linear functions of t,

    a_l . t + b_l  <=  x(t)  <=  a_u . t + b_u,        a_l, a_u of size k,

propagated layer by layer (forward-mode LiRPA). Because k is tiny, a layer costs a few calls of
the layer itself (k + 1 rows per sample for each function) instead of a back-substitution per
neuron, and no auto_LiRPA graph is built. Internally t is rescaled per (sub-)box to s in
[-1, 1]^k (t = centre + radius * s): a linear function's bias row is its value at the box
centre, and its range is bias -/+ sum_j |a_j|.

API (all take the layers, the input's linear bounds and boxes t_low, t_high of shape [B, k]):

* `margin_lower_bounds(layers, input_bounds, C, t_low, t_high)` -> [B, S], lower bounds of C f
  for a specification C [B, S, n_out]; `output_bounds` -> ([B, *S_out], [B, *S_out]);
  `affine_output_bounds` -> the outputs' linear bounds in t (`AffineBounds`).
* options: `pieces` (split every box into equal sub-boxes, bounded as one batch; the bound is
  the minimum over them), `interval` (propagate an interval alongside and intersect),
  `back_substitute` (margins only: add a CROWN-style back-substitution of C, of only the rows
  that decide with `minimum_only` / `refine_below`), `max_boxes` (bound at most this many
  sub-boxes at once, to cap memory), `compiled` (with back_substitute, on the CPU: networks
  Linear-ReLU-Linear-ReLU-Linear along one direction go through the compiled kernels of
  `auditai_ops.verify.mlp_kernels`, the same bounds several times faster; default on),
  `partial` and `full` (with refine_below: see `back_substitution`, "Partial first").
* layers: a chain (nn.Sequential, a list, a checked `auditai_container`) or a computation graph
  (any module torch.fx traces into supported leaves, additions and channel concatenations; an
  element of a list may be one): see `tracing` and `graph`.

Modules, one concern each:

* `bounds`: `AffineBounds` (linear bounds in t), concretisation, affine inputs, box splitting.
* `layer_kinds`: the leaf types by kind (affine, activation, pooling, reshape).
* `tracing`: which layers are supported, and flattening a model into its chain of leaves.
* `state`: the propagation state (rows of linear functions of s), unstable-neuron bookkeeping.
* `affine`: affine layers and reshapes, forward and transposed.
* `relaxations`: the lines that bound each activation over an interval.
* `activations`: relaxing an activation layer in forward mode.
* `pooling`: max pooling (the other pooling layers and upsampling are affine: `affine`).
* `kinks`: the exact first piecewise-linear layer (k = 1) and its sparse products.
* `specification`: folding the margin specification C into the last layer.
* `back_substitution`: CROWN's back-substitution of the chosen margin rows.
* `graph`: computation graphs (residual additions, concatenations, fan-out) by torch.fx.
* `driver`: the public entry points: planning, chunking, the forward pass.

Floating point: like auto_LiRPA, the bounds are computed in the input's dtype without
directed rounding; the matrix products' rounding (about 1e-6 relative in float32) is not
accounted for. Prove with a small positive margin, as the verifier does.
"""

from auditai_ops.verify.linear_bounds.back_substitution import _refine as _refine
from auditai_ops.verify.linear_bounds.bounds import AffineBounds, affine_input, concretize, latent_line_input, split_box
from auditai_ops.verify.linear_bounds.driver import affine_output_bounds, margin_lower_bounds, output_bounds
from auditai_ops.verify.linear_bounds.kinks import _Kinks as _Kinks
from auditai_ops.verify.linear_bounds.relaxations import _relu_lines as _relu_lines
from auditai_ops.verify.linear_bounds.specification import _group_samples as _group_samples
from auditai_ops.verify.linear_bounds.specification import _spec_layer as _spec_layer
from auditai_ops.verify.linear_bounds.tracing import LayerList, flatten_layers

__all__ = [
    "AffineBounds",
    "LayerList",
    "affine_input",
    "affine_output_bounds",
    "concretize",
    "flatten_layers",
    "latent_line_input",
    "margin_lower_bounds",
    "output_bounds",
    "split_box",
]
