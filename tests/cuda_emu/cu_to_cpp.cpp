// cu_to_cpp: rewrites a CUDA source file (kernels/*.cu) into C++ that the host compiler builds against cuda_emu.hpp.
// Usage: cu_to_cpp <input.cu> <output.cpp>
// Two rewrites, each kept on its line so that compiler messages keep the .cu file's line numbers (#line 1 first):
//   KERNEL<<<CONFIG>>>(ARGS)            ->  ::cuboid::emu::Launch(CONFIG)(KERNEL, "KERNEL", __FILE__, __LINE__)(ARGS)
//   extern __shared__ [__align__(N)] T NAME[];  ->  T* const NAME = ::cuboid::emu::dynamic_shared<T>();
// KERNEL is the name before <<< with its template arguments (balanced <...>) and namespace qualifiers.
// Everything else is copied unchanged; cuda_emu.hpp is included first.
#include <cctype>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <string>

namespace {

bool is_name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == ':'; }

// Start of the kernel expression that ends just before `end` (the position of "<<<").
std::size_t kernel_start(const std::string& text, std::size_t end) {
  std::size_t pos = end;
  if (pos > 0 && text[pos - 1] == '>') { // template arguments
    int depth = 0;
    while (pos > 0) {
      --pos;
      if (text[pos] == '>') {
        ++depth;
      } else if (text[pos] == '<' && --depth == 0) {
        break;
      }
    }
  }
  while (pos > 0 && is_name_char(text[pos - 1])) {
    --pos;
  }
  return pos;
}

std::string escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
    }
    out += c;
  }
  return out;
}

std::string rewrite_launches(const std::string& text, const std::string& path) {
  std::string out;
  std::size_t copied = 0;
  std::size_t open = text.find("<<<");
  while (open != std::string::npos) {
    const std::size_t close = text.find(">>>", open + 3);
    if (close == std::string::npos) {
      throw std::runtime_error(path + ": '<<<' without a matching '>>>'");
    }
    const std::size_t start = kernel_start(text, open);
    const std::string kernel = text.substr(start, open - start);
    if (kernel.empty()) {
      throw std::runtime_error(path + ": no kernel name before '<<<'");
    }
    const std::string config = text.substr(open + 3, close - open - 3);
    out += text.substr(copied, start - copied);
    out += "::cuboid::emu::Launch(" + config + ")(" + kernel + ", \"" + escape(kernel) + "\", __FILE__, __LINE__)";
    copied = close + 3;
    open = text.find("<<<", copied);
  }
  return out + text.substr(copied);
}

std::string rewrite_dynamic_shared(const std::string& text) {
  // extern __shared__ [__align__(N)] <type words> <name>[];  ->  $1 = the type, $2 = the name
  static const std::regex decl(R"(extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?)"
                               R"(([A-Za-z_][A-Za-z0-9_:]*(?:\s+[A-Za-z_][A-Za-z0-9_:]*)*)\s+)"
                               R"(([A-Za-z_][A-Za-z0-9_]*)\s*\[\s*\]\s*;)");
  return std::regex_replace(text, decl, "$1* const $2 = ::cuboid::emu::dynamic_shared<$1>();");
}

// reinterpret_cast<[const] V*>(  ->  ::cuboid::emu::vector_cast<[const] V*>(  for the CUDA vector types, whose
// accesses fault on a GPU when misaligned (the host would not notice).
std::string rewrite_vector_casts(const std::string& text) {
  static const std::regex cast(
      R"(reinterpret_cast\s*<\s*((?:const\s+)?(?:u?int[24]|u?short[24]|float[24]|double2|__nv_bfloat162|__half2)\s*\*)\s*>)");
  return std::regex_replace(text, cast, "::cuboid::emu::vector_cast<$1>");
}

} // namespace

int main(int argc, char* argv[]) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " <input.cu> <output.cpp>\n";
    return 2;
  }
  try {
    std::ifstream in(argv[1]);
    if (!in) {
      throw std::runtime_error(std::string(argv[1]) + ": cannot be read");
    }
    std::stringstream buffer;
    buffer << in.rdbuf();
    const std::string body = rewrite_vector_casts(rewrite_dynamic_shared(rewrite_launches(buffer.str(), argv[1])));
    std::ofstream out(argv[2]);
    out << "#include \"tests/cuda_emu/cuda_emu.hpp\"\n#line 1 \"" << escape(argv[1]) << "\"\n" << body;
    if (!out) {
      throw std::runtime_error(std::string(argv[2]) + ": cannot be written");
    }
  } catch (const std::exception& e) {
    std::cerr << "cu_to_cpp: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
