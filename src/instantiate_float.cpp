// The float instantiations of eigenformer::precompiled: every template the headers list at their
// end (core/precompiled.hpp), defined once here so that programs linking the library compile none
// of them.
#define EIGENFORMER_INSTANTIATE_FLOAT
#include <eigenformer/eigenformer.hpp>
