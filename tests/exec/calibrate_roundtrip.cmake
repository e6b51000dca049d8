# `cuboid calibrate` writes a profile that `cuboid simulate --profile` and `cuboid run --profile` accept: calibrate
# (CUBOID, PROFILE), simulate with it on the cpu device, then one short run with it whose JSON must pass CHECK and
# whose predicted step time is the one `simulate --gpu cpu` printed (same IR, same profile). On a GPU cluster the CPU
# profile is refused (exit 2).
file(REMOVE ${PROFILE})
execute_process(COMMAND ${CUBOID} calibrate --backend cpu --out ${PROFILE} --min-time 0.002 --tp-sizes 1,2
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
message("${out}${err}")
if(NOT rc EQUAL 0 OR NOT EXISTS ${PROFILE})
  message(FATAL_ERROR "cuboid calibrate exited with '${rc}' or wrote no ${PROFILE}")
endif()
file(READ ${PROFILE} text)
if(NOT text MATCHES "gpu: cpu" OR NOT text MATCHES "gemm_table:")
  message(FATAL_ERROR "${PROFILE} is not a CPU profile with a GEMM table")
endif()
# --- in-situ units (issue 5) --- the default calibration times the tp-1 units inside real training steps.
if(NOT out MATCHES "tp-1 units measured in situ" OR NOT text MATCHES "measured in situ")
  message(FATAL_ERROR "cuboid calibrate did not report in-situ units (output or profile assumptions)")
endif()
execute_process(COMMAND ${CUBOID} calibrate --backend cpu --out ${PROFILE}.bad --in-situ-clock sundial
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
if(NOT rc EQUAL 2 OR NOT err MATCHES "--in-situ-clock" OR NOT err MATCHES "cpu, wall" OR EXISTS ${PROFILE}.bad)
  message(FATAL_ERROR "calibrate --in-situ-clock sundial: exit '${rc}' (want 2 naming the flag and cpu, wall), '${err}'")
endif()
execute_process(COMMAND ${CUBOID} simulate --model gpt-tiny --num-gpus 2 --dp 2 --profile ${PROFILE}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
if(NOT rc EQUAL 2 OR NOT err MATCHES "--gpu cpu")
  message(FATAL_ERROR "a CPU profile on the default A100 cluster: exit '${rc}' (want 2), '${err}'")
endif()
execute_process(COMMAND ${CUBOID} simulate --model gpt-tiny --gpu cpu --num-gpus 1 --global-batch-size 2
                        --profile ${PROFILE} --json
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
message("${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cuboid simulate --gpu cpu --profile ${PROFILE} exited with '${rc}'")
endif()
string(JSON simulated_s GET "${out}" step_time_s)
execute_process(COMMAND ${CUBOID} run --backend cpu --steps 2 --global-batch-size 2 --profile ${PROFILE} --json
                RESULT_VARIABLE rc OUTPUT_FILE ${PROFILE}.run.json ERROR_VARIABLE err TIMEOUT 120)
message("${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cuboid run --profile ${PROFILE} exited with '${rc}'")
endif()
execute_process(COMMAND ${CHECK} --json ${PROFILE}.run.json --ranks 1 --steps 2 RESULT_VARIABLE rc
                OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cuboid run --profile ${PROFILE} --json failed its check")
endif()
file(READ ${PROFILE}.run.json run_json)
string(JSON predicted_s GET "${run_json}" predicted_step_time_s)
# CMake has no floating-point math: compare the leading digits of the two printed values.
string(SUBSTRING "${simulated_s}" 0 7 simulated_head)
string(SUBSTRING "${predicted_s}" 0 7 predicted_head)
if(NOT simulated_head STREQUAL predicted_head)
  message(FATAL_ERROR "simulate --gpu cpu predicts ${simulated_s} s, cuboid run predicted ${predicted_s} s")
endif()
message("simulate --gpu cpu: ${simulated_s} s; cuboid run's prediction: ${predicted_s} s")
