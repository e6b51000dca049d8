# `cuboid calibrate` writes a profile that `cuboid simulate --profile` and `cuboid run --profile` accept: calibrate
# (CUBOID, PROFILE), simulate with it (exit 0), then one short run with it whose JSON must pass CHECK.
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
execute_process(COMMAND ${CUBOID} simulate --model gpt-tiny --num-gpus 2 --dp 2 --profile ${PROFILE}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
message("${out}${err}")
if(NOT rc EQUAL 0 OR NOT out MATCHES "cpu-measured")
  message(FATAL_ERROR "cuboid simulate --profile ${PROFILE} exited with '${rc}' or did not use the profile")
endif()
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
