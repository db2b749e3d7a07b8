// FunctionRef<R(Args...)>: a non-owning reference to a callable (a lambda, a function object or
// a function pointer), for callbacks that run only during the call that receives them: no
// allocation and one indirect call, unlike std::function.
//
// It refers to the callable, it does not copy it, so it must not outlive it: take it as a
// parameter and call it before returning; never store it. A lambda passed straight to a
// FunctionRef parameter lives until the end of the full expression, which is long enough.
// Thread-compatible (two pointers).
#pragma once

#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

namespace sluice::shuffle {

template <typename Signature>
class FunctionRef;

template <typename R, typename... Args>
class FunctionRef<R(Args...)> {
 public:
  template <typename F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> &&
           std::is_object_v<std::remove_reference_t<F>> &&
           std::is_invocable_r_v<R, std::remove_reference_t<F>&, Args...>) FunctionRef(F&& f)
  noexcept  // NOLINT(google-explicit-constructor): used like a callable
      : object_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* object, Args... args) -> R {
          return std::invoke(*static_cast<std::remove_reference_t<F>*>(object),
                             std::forward<Args>(args)...);
        }) {}

  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void* object_;
  R (*call_)(void*, Args...);
};

}  // namespace sluice::shuffle
