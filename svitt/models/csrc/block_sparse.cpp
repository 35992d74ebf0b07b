// Block-sparse attention on the CPU, the block part of `svitt.models.attention._BlockSparse`:
// every query block against its gathered key blocks and the [CLS] key. One pass per query block
// keeps the block's scores in cache from the first matmul to the last, where the PyTorch-op
// kernel makes a full pass over all scores for each step of the softmax (issue #7).
//
// Layout: q (already scaled), k, v are contiguous [B, H, 1 + n, d], [CLS] first; blocks of G
// tokens start at row 1. Keys past the last token (the padded tail of the last block) are
// skipped here, whatever the mask holds there. Work is split over (batch, head) pairs, so
// each thread owns the key and value gradients it writes.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*, const int*);
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*);
}

namespace {

// Row-major C[m, n] = alpha * op(A) @ op(B) + beta * C, through column-major BLAS.
template <typename T>
void gemm(bool trans_a, bool trans_b, int m, int n, int k, T alpha, const T* a, int lda,
          const T* b, int ldb, T beta, T* c, int ldc) {
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&ta, &tb, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
  } else {
    dgemm_(&ta, &tb, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
  }
}

template <typename T>
T dot(const T* x, const T* y, int64_t len) {
  T total = 0;
  for (int64_t i = 0; i < len; ++i) total += x[i] * y[i];
  return total;
}

template <typename T>
void axpy(T alpha, const T* x, T* y, int64_t len) {
  for (int64_t i = 0; i < len; ++i) y[i] += alpha * x[i];
}

struct Shape {
  int64_t batch, heads, length, dim, num_blocks, num_keys, block;  // num_keys: K blocks
  int64_t tokens() const { return length - 1; }
  int64_t width() const { return num_keys * block; }  // gathered keys per query block
  int64_t rows_in(int64_t block_index) const {  // real tokens of a block
    return std::min(block, tokens() - block_index * block);
  }
};

// Runs fn(b, h) for every (batch, head) pair on torch's OpenMP threads; BLAS calls inside a
// parallel region run single-threaded.
template <typename Fn>
void for_each_head(const Shape& s, Fn fn) {
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) fn(p / s.heads, p % s.heads);
  });
}

// Copies the key blocks of query block i into buf [width, d] (zero rows past the last token).
template <typename T>
void gather(const T* x, const int64_t* blocks, const Shape& s, T* buf) {
  for (int64_t j = 0; j < s.num_keys; ++j) {
    const int64_t block = blocks[j], rows = s.rows_in(block);
    T* dst = buf + j * s.block * s.dim;
    std::memcpy(dst, x + (1 + block * s.block) * s.dim, rows * s.dim * sizeof(T));
    std::memset(dst + rows * s.dim, 0, (s.block - rows) * s.dim * sizeof(T));
  }
}

template <typename T>
void scatter_add(const T* buf, const int64_t* blocks, const Shape& s, T* x) {
  for (int64_t j = 0; j < s.num_keys; ++j) {
    const int64_t block = blocks[j], rows = s.rows_in(block);
    axpy<T>(1, buf + j * s.block * s.dim, x + (1 + block * s.block) * s.dim, rows * s.dim);
  }
}

// Bias of (query row r, gathered key c) in block i; column 0 is the [CLS] key.
template <typename T>
struct Mask {
  const T* data = nullptr;
  std::vector<int64_t> stride;  // [B, H, nb, G, 1 + width], broadcast dims have stride 0
  T at(int64_t b, int64_t h, int64_t i, int64_t r, int64_t c) const {
    return data[b * stride[0] + h * stride[1] + i * stride[2] + r * stride[3] + c * stride[4]];
  }
};

template <typename T>
Mask<T> make_mask(const std::optional<at::Tensor>& mask, const Shape& s) {
  Mask<T> out;
  if (mask) {
    TORCH_CHECK(mask->dim() == 5 && mask->size(4) == 1 + s.width(),
                "block_sparse: mask must be [B, H, num_blocks, G, 1 + K*G]");
    out.data = mask->data_ptr<T>();
    out.stride = mask->strides().vec();
  }
  return out;
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_impl(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_blocks,
    const std::optional<at::Tensor>& mask_tensor, const Shape& s) {
  const int64_t width = s.width(), dim = s.dim, G = s.block;
  auto rows = at::zeros({s.batch, s.heads, s.num_blocks, G, dim}, q.options());
  auto probs = at::zeros({s.batch, s.heads, s.num_blocks, G, width}, q.options());
  auto cls_probs = at::zeros({s.batch, s.heads, s.num_blocks, G, 1}, q.options());
  const T *qp = q.data_ptr<T>(), *kp = k.data_ptr<T>(), *vp = v.data_ptr<T>();
  const int64_t* kb = key_blocks.data_ptr<int64_t>();
  T *rows_p = rows.data_ptr<T>(), *probs_p = probs.data_ptr<T>();
  T* cls_p = cls_probs.data_ptr<T>();
  const Mask<T> mask = make_mask<T>(mask_tensor, s);
  for_each_head(s, [&](int64_t b, int64_t h) {
    std::vector<T> kbuf(width * dim), vbuf(width * dim);
    const int64_t head = b * s.heads + h;
    const T *qh = qp + head * s.length * dim, *kh = kp + head * s.length * dim;
    const T* vh = vp + head * s.length * dim;
    for (int64_t i = 0; i < s.num_blocks; ++i) {
      const int64_t m = s.rows_in(i), slot = head * s.num_blocks + i;
      const int64_t* blocks = kb + i * s.num_keys;
      gather(kh, blocks, s, kbuf.data());
      gather(vh, blocks, s, vbuf.data());
      const T* qi = qh + (1 + i * G) * dim;
      T* p = probs_p + slot * G * width;
      T* cls = cls_p + slot * G;
      gemm<T>(false, true, m, width, dim, 1, qi, dim, kbuf.data(), dim, 0, p, width);
      for (int64_t r = 0; r < m; ++r) {
        T* row = p + r * width;
        T cls_logit = dot(qi + r * dim, kh, dim);
        if (mask.data) {
          cls_logit += mask.at(b, h, i, r, 0);
          for (int64_t j = 0; j < s.num_keys; ++j) {
            for (int64_t c = 0; c < s.rows_in(blocks[j]); ++c) {
              row[j * G + c] += mask.at(b, h, i, r, 1 + j * G + c);
            }
          }
        }
        T top = cls_logit;
        for (int64_t j = 0; j < s.num_keys; ++j) {
          const T* part = row + j * G;
          for (int64_t c = 0; c < s.rows_in(blocks[j]); ++c) top = std::max(top, part[c]);
        }
        T total = std::exp(cls_logit - top);
        cls[r] = total;
        for (int64_t j = 0; j < s.num_keys; ++j) {
          T* part = row + j * G;
          const int64_t real = s.rows_in(blocks[j]);
          T sum = 0;
          for (int64_t c = 0; c < real; ++c) {
            part[c] = std::exp(part[c] - top);
            sum += part[c];
          }
          std::fill(part + real, part + G, T(0));
          total += sum;
        }
        const T scale = T(1) / total;
        for (int64_t c = 0; c < width; ++c) row[c] *= scale;
        cls[r] *= scale;
      }
      T* out = rows_p + slot * G * dim;
      gemm<T>(false, false, m, dim, width, 1, p, width, vbuf.data(), dim, 0, out, dim);
      for (int64_t r = 0; r < m; ++r) axpy(cls[r], vh, out + r * dim, dim);
    }
  });
  return {rows, probs, cls_probs};
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& key_blocks, const at::Tensor& probs, const at::Tensor& cls_probs,
    const at::Tensor& rows, bool with_dlogits, const Shape& s) {
  const int64_t width = s.width(), dim = s.dim, G = s.block;
  auto dq = at::zeros({s.batch, s.heads, s.num_blocks, G, dim}, q.options());
  auto dk = at::zeros({s.batch, s.heads, s.length, dim}, q.options());
  auto dv = at::zeros({s.batch, s.heads, s.length, dim}, q.options());
  auto dlogits = with_dlogits
      ? at::zeros({s.batch, s.heads, s.num_blocks, G, 1 + width}, q.options())
      : at::empty({0}, q.options());
  const T *gp = grad.data_ptr<T>(), *qp = q.data_ptr<T>(), *kp = k.data_ptr<T>();
  const T *vp = v.data_ptr<T>(), *pp = probs.data_ptr<T>(), *cp = cls_probs.data_ptr<T>();
  const T* rp = rows.data_ptr<T>();
  const int64_t* kb = key_blocks.data_ptr<int64_t>();
  T *dq_p = dq.data_ptr<T>(), *dk_p = dk.data_ptr<T>(), *dv_p = dv.data_ptr<T>();
  T* dl_p = with_dlogits ? dlogits.data_ptr<T>() : nullptr;
  for_each_head(s, [&](int64_t b, int64_t h) {
    std::vector<T> kbuf(width * dim), vbuf(width * dim), dbuf(width * dim), ds(G * width);
    std::vector<T> row_dot(G), dcls(G);
    const int64_t head = b * s.heads + h;
    const int64_t offset = head * s.length * dim;
    const T *qh = qp + offset, *kh = kp + offset, *vh = vp + offset;
    T *dkh = dk_p + offset, *dvh = dv_p + offset;
    for (int64_t i = 0; i < s.num_blocks; ++i) {
      const int64_t m = s.rows_in(i), slot = head * s.num_blocks + i;
      const int64_t* blocks = kb + i * s.num_keys;
      gather(kh, blocks, s, kbuf.data());
      gather(vh, blocks, s, vbuf.data());
      const T *qi = qh + (1 + i * G) * dim, *gi = gp + slot * G * dim;
      const T *p = pp + slot * G * width, *cls = cp + slot * G, *out = rp + slot * G * dim;
      // dL/dlogits = P * (dL/dP - rowsum(P * dL/dP)), block keys and the [CLS] key.
      gemm<T>(false, true, m, width, dim, 1, gi, dim, vbuf.data(), dim, 0, ds.data(), width);
      for (int64_t r = 0; r < m; ++r) {
        row_dot[r] = dot(gi + r * dim, out + r * dim, dim);
        dcls[r] = (dot(gi + r * dim, vh, dim) - row_dot[r]) * cls[r];
        T* d = ds.data() + r * width;
        const T* pr = p + r * width;
        for (int64_t c = 0; c < width; ++c) d[c] = (d[c] - row_dot[r]) * pr[c];
      }
      T* dqi = dq_p + slot * G * dim;
      gemm<T>(false, false, m, dim, width, 1, ds.data(), width, kbuf.data(), dim, 0, dqi, dim);
      gemm<T>(true, false, width, dim, m, 1, ds.data(), width, qi, dim, 0, dbuf.data(), dim);
      scatter_add(dbuf.data(), blocks, s, dkh);
      gemm<T>(true, false, width, dim, m, 1, p, width, gi, dim, 0, dbuf.data(), dim);
      scatter_add(dbuf.data(), blocks, s, dvh);
      for (int64_t r = 0; r < m; ++r) {
        axpy(dcls[r], kh, dqi + r * dim, dim);
        axpy(dcls[r], qi + r * dim, dkh, dim);
        axpy(cls[r], gi + r * dim, dvh, dim);
      }
      if (dl_p) {
        T* dl = dl_p + slot * G * (1 + width);
        for (int64_t r = 0; r < m; ++r) {
          dl[r * (1 + width)] = dcls[r];
          std::memcpy(dl + r * (1 + width) + 1, ds.data() + r * width, width * sizeof(T));
        }
      }
    }
  });
  return {dq, dk, dv, dlogits};
}

Shape shape_of(const at::Tensor& q, const at::Tensor& key_blocks, int64_t block_size) {
  TORCH_CHECK(q.dim() == 4, "block_sparse: q must be [B, H, N, d]");
  TORCH_CHECK(key_blocks.scalar_type() == at::kLong, "block_sparse: key_blocks must be int64");
  return {q.size(0), q.size(1), q.size(2), q.size(3), key_blocks.size(0), key_blocks.size(1),
          block_size};
}

// The kernels index raw pointers: every tensor but the (strided) mask must be contiguous.
void check_contiguous(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(t->is_contiguous(), "block_sparse: inputs must be contiguous");
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_blocks,
    const std::optional<at::Tensor>& mask, int64_t block_size) {
  const Shape s = shape_of(q, key_blocks, block_size);
  check_contiguous({&q, &k, &v, &key_blocks});
  if (q.scalar_type() == at::kDouble) {
    return forward_impl<double>(q, k, v, key_blocks, mask, s);
  }
  TORCH_CHECK(q.scalar_type() == at::kFloat, "block_sparse: float32 or float64 only");
  return forward_impl<float>(q, k, v, key_blocks, mask, s);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& key_blocks, const at::Tensor& probs, const at::Tensor& cls_probs,
    const at::Tensor& rows, bool with_dlogits, int64_t block_size) {
  const Shape s = shape_of(q, key_blocks, block_size);
  check_contiguous({&grad, &q, &k, &v, &key_blocks, &probs, &cls_probs, &rows});
  if (q.scalar_type() == at::kDouble) {
    return backward_impl<double>(grad, q, k, v, key_blocks, probs, cls_probs, rows,
                                 with_dlogits, s);
  }
  TORCH_CHECK(q.scalar_type() == at::kFloat, "block_sparse: float32 or float64 only");
  return backward_impl<float>(grad, q, k, v, key_blocks, probs, cls_probs, rows, with_dlogits,
                              s);
}

}  // namespace

// Schemas here, CPU kernels below: registered for the CPU key (not as catch-alls), so dispatch
// modes such as FlopCounterMode see the calls. The autograd Function in
// svitt/models/attention.py calls them with grad mode off.
TORCH_LIBRARY(svitt_block_sparse, m) {
  m.def(
      "forward(Tensor q, Tensor k, Tensor v, Tensor key_blocks, Tensor? mask, int block_size"
      ") -> (Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor key_blocks, Tensor probs, "
      "Tensor cls_probs, Tensor rows, bool with_dlogits, int block_size) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(svitt_block_sparse, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}
