// An embedder's program: links the installed sluice::buffer and uses the public headers as
// <sluice/...> (headers_alone, next to it, compiles every installed header on its own).
#include <cstdio>

#include <sluice/buffer/local_buffer_pool.h>
#include <sluice/buffer/network_buffer_pool.h>

int main() {
  sluice::buffer::NetworkBufferPoolOptions options;
  options.network_memory = 1 << 20;
  options.segment_size = 4096;
  auto global = sluice::buffer::NetworkBufferPool::Create(options);
  if (!global.ok()) return 1;
  sluice::buffer::LocalBufferPoolOptions lo;
  lo.min_segments = 2;
  lo.max_segments = 8;
  auto pool = (*global)->CreateLocalBufferPool(lo);
  if (!pool.ok()) return 1;
  {
    sluice::buffer::Buffer b = (*pool)->RequestBuffer();
    if (!b || b.capacity() != 4096) return 1;
  }
  (*pool)->Destroy();
  const bool ok = (*global)->available_segments() == (*global)->total_segments();
  std::printf("consumer: %s\n", ok ? "ok" : "leak");
  return ok ? 0 : 1;
}
