# Runs CMD (a ;-list) and passes only if it exits non-zero AND its output matches REGEX: the fault-injection test
# needs both (PASS_REGULAR_EXPRESSION alone would ignore the exit status).
execute_process(COMMAND ${CMD} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 55)
message("${out}${err}")
if(rc EQUAL 0)
  message(FATAL_ERROR "expected a non-zero exit status, got 0")
endif()
if(NOT "${out}${err}" MATCHES "${REGEX}")
  message(FATAL_ERROR "output does not match '${REGEX}'")
endif()
message("exit status ${rc} and message as expected")
