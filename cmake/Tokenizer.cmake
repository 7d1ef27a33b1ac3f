# eigenformer::tokenizer: the headers plus PCRE2, for <eigenformer/text/gpt2_tokenizer.hpp>.
# PCRE2 runs GPT-2's pre-tokenisation regex (Unicode properties, a lookahead, JIT). It is optional
# and kept off eigenformer::eigenformer, so that a project that does not tokenise text links
# nothing new; without it this target does not exist and everything else builds.
list(APPEND CMAKE_MODULE_PATH ${CMAKE_CURRENT_LIST_DIR})
find_package(PCRE2 QUIET)  # PCRE2_MATCH_INVALID_UTF needs 10.34 (Debian 12 has 10.42)
if(PCRE2_FOUND)
  add_library(eigenformer_tokenizer INTERFACE)
  add_library(eigenformer::tokenizer ALIAS eigenformer_tokenizer)
  set_target_properties(eigenformer_tokenizer PROPERTIES EXPORT_NAME tokenizer)
  target_link_libraries(eigenformer_tokenizer INTERFACE eigenformer PCRE2::8BIT)
else()
  message(STATUS "eigenformer: PCRE2 not found, so no eigenformer::tokenizer (the GPT-2 "
                 "tokenizer). On Debian/Ubuntu: sudo apt-get install libpcre2-dev")
endif()
