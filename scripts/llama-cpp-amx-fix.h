/* Force-included into llama.cpp's build by scripts/install-llama-cpp.sh.
 *
 * GCC before 14 declares _tile_loadconfig's operand as 8 bytes (`"m" (*(const void **)p)`) of the
 * 64-byte AMX tile configuration, so the optimiser drops the stores that fill the rest of it
 * (ggml-cpu/amx/mmq.cpp's ggml_tile_config_init: colsb[] and rows[]); ldtilecfg then loads stack
 * garbage, faults (#GP), and the first multi-token llama_decode dies with SIGSEGV. Measured on
 * this project's Xeon with GCC 12.2 (Debian 12): the compiled code zeroes 32 bytes, sets the
 * palette and runs ldtilecfg. This macro declares the whole 64 bytes as read.
 */
#if defined(__GNUC__) && !defined(__clang__) && defined(__AMX_TILE__) && __GNUC__ < 14
#include <immintrin.h>
#undef _tile_loadconfig
#define _tile_loadconfig(config) __asm__ volatile("ldtilecfg\t%X0" ::"m"(*(const char(*)[64])(config)))
#endif
