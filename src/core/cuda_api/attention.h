/* cuda_api/attention.h - the CUDA attention kernels' one process-wide setting, as the
 * backend reads it (cuda/attention.cu). The core sets it with
 * lt_cuda_attention_set_deterministic (core/lt_cuda.h, through the backend's table).
 *
 * Deterministic backward. By default the backward accumulates dQ with f32 atomic adds
 * from every key block (one pass over the keys and queries, as FlashAttention-2 does), so
 * the last bits of dq can change from run to run. With the switch on, dQ comes from a
 * separate pass in which each query block walks the key blocks in a fixed order: no
 * atomics, the same bits on every run, about 1.3x the backward's arithmetic (scores and
 * dP are computed twice). dK and dV are deterministic either way. */
#ifndef LT_CUDA_API_ATTENTION_H
#define LT_CUDA_API_ATTENTION_H

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when the deterministic backward is selected, else 0. */
int lt_cuda_attention_get_deterministic(void);

#ifdef __cplusplus
}
#endif

#endif
