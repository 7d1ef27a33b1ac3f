// The double instantiations of eigenformer::precompiled: every template the headers list at their
// end (core/precompiled.hpp), defined once here so that programs linking the library compile none
// of them.
#define EIGENFORMER_INSTANTIATE_DOUBLE
#include <eigenformer/eigenformer.hpp>
