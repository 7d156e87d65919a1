/* cuda_api/ops.h - the CUDA side of every op: the CPU function's prototype with the
 * lt_cuda_ prefix (src/lt_ops.h and src/lt_quant.h document the arguments). The C op
 * checks arguments, then calls these for CUDA tensors; they may assume the checks passed
 * and that every tensor argument is on the same device. Implemented in the .cu files of
 * cuda/. */
#ifndef LT_CUDA_API_OPS_H
#define LT_CUDA_API_OPS_H

#include "lt_ops.h"
#include "lt_quant.h"

#ifdef __cplusplus
extern "C" {
#endif


/* lt_ops.h */
int lt_cuda_unary_forward(lt_tensor *out, const lt_tensor *x, int op);
int lt_cuda_unary_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *x, int op);
int lt_cuda_binary_forward(lt_tensor *out, const lt_tensor *a, const lt_tensor *b, int op);
int lt_cuda_binary_backward(lt_tensor *da, lt_tensor *db, const lt_tensor *dout,
                            const lt_tensor *a, const lt_tensor *b, int op);
int lt_cuda_scalar_forward(lt_tensor *out, const lt_tensor *x, double s, int op, int reversed);
int lt_cuda_scalar_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *x, double s,
                            int op, int reversed);
int lt_cuda_axpby(lt_tensor *y, double alpha, const lt_tensor *x, double beta);
int lt_cuda_reduce_forward(lt_tensor *out, const lt_tensor *x, int32_t ndims,
                           const int32_t *dims, int op);
int lt_cuda_reduce_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *x,
                            const lt_tensor *out, int op);
int lt_cuda_argmax(lt_tensor *out, const lt_tensor *x, int dim);
int lt_cuda_sum_squares(const lt_tensor *x, double *out);
int lt_cuda_has_nonfinite(const lt_tensor *x, int32_t *out);
int lt_cuda_softmax_forward(lt_tensor *out, const lt_tensor *x);
int lt_cuda_softmax_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *out);
int lt_cuda_log_softmax_forward(lt_tensor *out, const lt_tensor *x);
int lt_cuda_log_softmax_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *out);
int lt_cuda_matmul(lt_tensor *c, const lt_tensor *a, const lt_tensor *b, int trans_a,
                   int trans_b, float alpha, float beta);
int lt_cuda_embedding_forward(lt_tensor *out, const lt_tensor *weight, const lt_tensor *ids);
int lt_cuda_embedding_backward(lt_tensor *dweight, const lt_tensor *dout, const lt_tensor *ids);
int lt_cuda_rmsnorm_forward(lt_tensor *out, lt_tensor *rstd, const lt_tensor *x,
                            const lt_tensor *weight, float eps);
int lt_cuda_rmsnorm_backward(lt_tensor *dx, lt_tensor *dweight, const lt_tensor *dout,
                             const lt_tensor *x, const lt_tensor *weight,
                             const lt_tensor *rstd);
int lt_cuda_rope_table(lt_tensor *cos, lt_tensor *sin, const lt_tensor *inv_freq);
int lt_cuda_rope_forward(lt_tensor *out, const lt_tensor *x, const lt_tensor *cos,
                         const lt_tensor *sin, const lt_tensor *positions);
int lt_cuda_rope_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *cos,
                          const lt_tensor *sin, const lt_tensor *positions);
int lt_cuda_swiglu_forward(lt_tensor *out, const lt_tensor *gate, const lt_tensor *up);
int lt_cuda_swiglu_backward(lt_tensor *dgate, lt_tensor *dup, const lt_tensor *dout,
                            const lt_tensor *gate, const lt_tensor *up);
int lt_cuda_attention_forward(lt_tensor *out, lt_tensor *lse, const lt_tensor *q,
                              const lt_tensor *k, const lt_tensor *v,
                              const lt_tensor *cu_seqlens, float scale, int causal);
int lt_cuda_attention_backward(lt_tensor *dq, lt_tensor *dk, lt_tensor *dv,
                               const lt_tensor *dout, const lt_tensor *q, const lt_tensor *k,
                               const lt_tensor *v, const lt_tensor *out, const lt_tensor *lse,
                               const lt_tensor *cu_seqlens, float scale, int causal);
int lt_cuda_dropout_forward(lt_tensor *out, lt_tensor *mask, const lt_tensor *x, float p,
                            lt_rng *rng);
int lt_cuda_dropout_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *mask,
                             float p);
int lt_cuda_sample_logits(const lt_tensor *logits, float temperature, int32_t top_k,
                          float top_p, lt_rng *rng, int32_t *out);
int lt_cuda_cross_entropy_forward(lt_tensor *loss, lt_tensor *lse, lt_tensor *row_loss,
                                  const lt_tensor *logits, const lt_tensor *targets,
                                  int64_t ignore_index, double normalizer);
int lt_cuda_cross_entropy_backward(lt_tensor *dlogits, const lt_tensor *logits,
                                   const lt_tensor *targets, const lt_tensor *lse, float dloss,
                                   int64_t ignore_index, double normalizer);
int lt_cuda_linear_cross_entropy_forward(lt_tensor *loss, lt_tensor *lse, lt_tensor *row_loss,
                                         const lt_tensor *h, const lt_tensor *w,
                                         const lt_tensor *targets, int64_t ignore_index,
                                         double normalizer);
int lt_cuda_linear_cross_entropy_backward(lt_tensor *dh, lt_tensor *dw, const lt_tensor *h,
                                          const lt_tensor *w, const lt_tensor *targets,
                                          const lt_tensor *lse, float dloss,
                                          int64_t ignore_index, double normalizer);
int lt_cuda_linear_cross_entropy_fused(lt_tensor *loss, lt_tensor *row_loss, lt_tensor *dh,
                                       lt_tensor *dw, const lt_tensor *h, const lt_tensor *w,
                                       const lt_tensor *targets, float dloss,
                                       int64_t ignore_index, double normalizer);
int lt_cuda_adamw_step(lt_tensor *param, const lt_tensor *grad, lt_tensor *exp_avg,
                       lt_tensor *exp_avg_sq, const lt_adamw_params *p);
int lt_cuda_adamw_step_multi(lt_tensor *const *params, const lt_tensor *const *grads,
                             lt_tensor *const *exp_avgs, lt_tensor *const *exp_avg_sqs,
                             int32_t n, const lt_adamw_params *p);
int lt_cuda_global_norm(const lt_tensor *const *tensors, int32_t n, double *out);

/* lt_quant.h */
int lt_cuda_quantize(lt_quant_state *q, const lt_tensor *w, int type, int blocksize,
                     int double_quant);
int lt_cuda_dequantize(lt_tensor *out, const lt_quant_state *q);
int lt_cuda_dequantize_rows(lt_tensor *out, const lt_quant_state *q, int64_t row0);
int lt_cuda_quant_absmax(lt_tensor *out, const lt_quant_state *q);
int lt_cuda_quant_linear_forward(lt_tensor *y, const lt_tensor *x, const lt_quant_state *w,
                                 float beta, float outlier_threshold);
int lt_cuda_quant_linear_backward(lt_tensor *dx, const lt_tensor *dy, const lt_quant_state *w,
                                  float beta);

#ifdef __cplusplus
}
#endif

#endif
