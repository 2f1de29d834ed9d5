# One small generated translation unit per (dtype, head dim) instantiation of the attention kernels,
# so builds parallelise. fae_flash_sources(<var> <ext>) writes them into the build tree with
# extension `cu` (nvcc, for _C) or `cpp` (host compiler, for the emulator) and returns the list,
# including the dispatch unit.
set(FAE_FLASH_DTYPES half_t bf16_t)
# The head dims come from their one home, cuda/flash/head_dims.h.
set(_fae_head_dims_h ${CMAKE_CURRENT_LIST_DIR}/head_dims.h)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_fae_head_dims_h})
file(STRINGS ${_fae_head_dims_h} _fae_fwd_line REGEX "kHeadDims\\[\\] *=")
file(STRINGS ${_fae_head_dims_h} _fae_bwd_line REGEX "kBwdHeadDims\\[\\] *=")
string(REGEX REPLACE "//.*" "" _fae_fwd_line "${_fae_fwd_line}")
string(REGEX REPLACE "//.*" "" _fae_bwd_line "${_fae_bwd_line}")
string(REGEX MATCHALL "[0-9]+" FAE_FLASH_HEAD_DIMS "${_fae_fwd_line}")
string(REGEX MATCHALL "[0-9]+" FAE_FLASH_BWD_HEAD_DIMS "${_fae_bwd_line}")
if(NOT FAE_FLASH_HEAD_DIMS OR NOT FAE_FLASH_BWD_HEAD_DIMS)
  message(FATAL_ERROR "could not read the head dims from ${_fae_head_dims_h}")
endif()

function(fae_flash_sources out ext)
  set(dir ${PROJECT_BINARY_DIR}/flash_instances_${ext})
  set(files)
  foreach(dt IN LISTS FAE_FLASH_DTYPES)
    foreach(d IN LISTS FAE_FLASH_HEAD_DIMS)
      set(f ${dir}/fwd_${dt}_d${d}.${ext})
      file(CONFIGURE OUTPUT ${f} CONTENT "#include \"cuda/flash/fwd_launch.cuh\"
template void fae::cuda::run_forward<fae::${dt}, ${d}>(const fae::FwdParams&, fae::cuda::Stream);
")
      list(APPEND files ${f})
    endforeach()
  endforeach()
  foreach(dt IN LISTS FAE_FLASH_DTYPES)
    foreach(d IN LISTS FAE_FLASH_BWD_HEAD_DIMS)
      set(f ${dir}/bwd_${dt}_d${d}.${ext})
      file(CONFIGURE OUTPUT ${f} CONTENT "#include \"cuda/flash/bwd_launch.cuh\"
template void fae::cuda::run_backward<fae::${dt}, ${d}>(const fae::BwdParams&, float*, float*, fae::cuda::Stream);
")
      list(APPEND files ${f})
    endforeach()
  endforeach()
  foreach(dt IN LISTS FAE_FLASH_DTYPES)  # attention weights and top-k (interp_launch.cuh)
    foreach(d IN LISTS FAE_FLASH_HEAD_DIMS)
      set(f ${dir}/interp_${dt}_d${d}.${ext})
      file(CONFIGURE OUTPUT ${f} CONTENT "#include \"cuda/flash/interp_launch.cuh\"
template void fae::cuda::run_weights<fae::${dt}, ${d}>(const fae::WeightsParams&, fae::cuda::Stream);
template void fae::cuda::run_topk_forward<fae::${dt}, ${d}>(const fae::TopkParams&, fae::cuda::Stream);
template void fae::cuda::run_topk_backward<fae::${dt}, ${d}>(const fae::TopkBwdParams&, fae::cuda::Stream);
")
      list(APPEND files ${f})
    endforeach()
  endforeach()
  file(CONFIGURE OUTPUT ${dir}/dispatch.${ext} CONTENT "#include \"cuda/flash/dispatch.cu\"\n")
  file(CONFIGURE OUTPUT ${dir}/interp_dispatch.${ext} CONTENT "#include \"cuda/flash/interp_dispatch.cu\"\n")
  list(APPEND files ${dir}/dispatch.${ext} ${dir}/interp_dispatch.${ext})
  set(${out} ${files} PARENT_SCOPE)
endfunction()
