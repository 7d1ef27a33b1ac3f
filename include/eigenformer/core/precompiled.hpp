// Compile once: the float and double instantiations of the library's templates, declared here and
// defined in one static library (eigenformer::precompiled, built from src/).
//
// The headers stay header-only: by default the macros below expand to nothing. A program that
// links eigenformer::precompiled gets EIGENFORMER_PRECOMPILED defined, and every header then
// declares its float and double instantiations `extern template`: the program compiles none of
// the ops', layers', models' or optimizers' code and links it from the library instead. The
// library's own sources define EIGENFORMER_INSTANTIATE_FLOAT or EIGENFORMER_INSTANTIATE_DOUBLE,
// which turns the same declarations into explicit instantiation definitions, so each list is
// written once, at the end of the header whose templates it names.
//
// Only out-of-class member functions (and free function templates) are kept out of a program by
// `extern template`: a member defined inside its class is implicitly inline, and GCC and clang
// compile it anyway in case they inline it. So the members that do real work are defined after
// their class.
//
//   EIGENFORMER_CLASS_TEMPLATES(Linear)     extern template class Linear<float>; (and double)
//   EIGENFORMER_STRUCT_TEMPLATES(KVCache)   the same for a template declared `struct`
//   EIGENFORMER_FUNCTION_TEMPLATES(LIST)    LIST(float) LIST(double), where LIST(S) writes
//     EIGENFORMER_FOR(S, void linear_forward<S>(Matrix<S>&, ...))   one per function
#pragma once

#if defined(EIGENFORMER_INSTANTIATE_FLOAT)
#define EIGENFORMER_FOR_float(...) template __VA_ARGS__;
#elif defined(EIGENFORMER_PRECOMPILED)
#define EIGENFORMER_FOR_float(...) extern template __VA_ARGS__;
#else
#define EIGENFORMER_FOR_float(...)
#endif

#if defined(EIGENFORMER_INSTANTIATE_DOUBLE)
#define EIGENFORMER_FOR_double(...) template __VA_ARGS__;
#elif defined(EIGENFORMER_PRECOMPILED)
#define EIGENFORMER_FOR_double(...) extern template __VA_ARGS__;
#else
#define EIGENFORMER_FOR_double(...)
#endif

/// The declaration (or definition) of one instantiation for Scalar S (float or double).
#define EIGENFORMER_FOR(S, ...) EIGENFORMER_FOR_##S(__VA_ARGS__)

#define EIGENFORMER_FUNCTION_TEMPLATES(LIST) LIST(float) LIST(double)

#define EIGENFORMER_CLASS_TEMPLATE_(name, S) EIGENFORMER_FOR(S, class name<S>)
#define EIGENFORMER_CLASS_TEMPLATES(name) \
  EIGENFORMER_CLASS_TEMPLATE_(name, float) EIGENFORMER_CLASS_TEMPLATE_(name, double)
// The same for a template declared with `struct` (clang's -Wmismatched-tags: the keyword must match).
#define EIGENFORMER_STRUCT_TEMPLATE_(name, S) EIGENFORMER_FOR(S, struct name<S>)
#define EIGENFORMER_STRUCT_TEMPLATES(name) \
  EIGENFORMER_STRUCT_TEMPLATE_(name, float) EIGENFORMER_STRUCT_TEMPLATE_(name, double)
