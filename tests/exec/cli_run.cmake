# Runs `cuboid run ... --json` (CMD, a ;-list; stdout to OUT) and, if REF_CMD is set, a reference run of the same
# training (stdout to REF_OUT), then checks them with cuboid_run_json_check (CHECK): exit status 0, exactly one JSON
# object, RANKS ranks, STEPS finite losses, positive measured and predicted step times, losses equal to the
# reference within 1e-4 relative (the equivalence tolerance of tests/exec/equivalence_main.cpp).
execute_process(COMMAND ${CMD} RESULT_VARIABLE rc OUTPUT_FILE ${OUT} ERROR_VARIABLE err TIMEOUT 240)
message("${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cuboid run exited with '${rc}'")
endif()
set(check_args --json ${OUT} --ranks ${RANKS} --steps ${STEPS})
if(REF_CMD)
  execute_process(COMMAND ${REF_CMD} RESULT_VARIABLE rc OUTPUT_FILE ${REF_OUT} ERROR_VARIABLE err TIMEOUT 240)
  message("${err}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "reference cuboid run exited with '${rc}'")
  endif()
  list(APPEND check_args --reference ${REF_OUT})
endif()
execute_process(COMMAND ${CHECK} ${check_args} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "check of ${OUT} failed")
endif()
