# One small generated translation unit per (dtype, head dim) instantiation of the attention kernels,
# so builds parallelise. fae_flash_sources(<var> <ext>) writes them into the build tree with
# extension `cu` (nvcc, for _C) or `cpp` (host compiler, for the emulator) and returns the list,
# including the dispatch unit.
set(FAE_FLASH_DTYPES half_t bf16_t)
set(FAE_FLASH_HEAD_DIMS 32 64 96 128 256)  # keep in sync with kHeadDims in cuda/flash/api.h
set(FAE_FLASH_BWD_HEAD_DIMS 32 64 96 128)  # kBwdHeadDims

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
  file(CONFIGURE OUTPUT ${dir}/dispatch.${ext} CONTENT "#include \"cuda/flash/dispatch.cu\"\n")
  list(APPEND files ${dir}/dispatch.${ext})
  set(${out} ${files} PARENT_SCOPE)
endfunction()
