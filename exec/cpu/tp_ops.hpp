// The conjugate tensor-parallel operators of Megatron (Shoeybi et al. 2019, fig. 3; Korthikanti et al. 2022, fig. 5)
// on row-major (rows, C) activations whose rows are the [s, b] sequence order:
//   f  (copy_to):      forward identity,        backward all-reduce      (before a column-parallel linear)
//   g  (reduce_from):  forward all-reduce,      backward identity        (after a row-parallel linear)
//   g' (gather_seq):   forward all-gather rows, backward reduce-scatter  (sequence parallel, before column-parallel)
//   f' (scatter_seq):  forward reduce-scatter,  backward all-gather rows (sequence parallel, after row-parallel)
// Each pair is written out as two calls; the layer code calls the forward one in forward and the other in backward.
#pragma once

#include "exec/communicator.hpp"
#include "exec/cpu/tensor.hpp"

namespace cuboid::exec::cpu {

/// In-place sum over the TP group (g forward, f backward).
void all_reduce_rows(Communicator& tp, MatRef x);
/// out (rows * tp, C) = concatenation of every member's x (rows, C) in TP-rank order (g' forward, f' backward).
void all_gather_rows(Communicator& tp, const ConstMatRef& x, Mat& out);
/// out (rows / tp, C) = this member's block of the sum of x over the group (f' forward, g' backward).
void reduce_scatter_rows(Communicator& tp, const ConstMatRef& x, Mat& out);

} // namespace cuboid::exec::cpu
