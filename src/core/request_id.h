// X-Request-Id values: "req_" and 13 base-32 digits, [0-9a-v] (the SPEC allows [0-9a-z]).
#pragma once

#include <cstddef>
#include <cstdint>

namespace apikey {

constexpr std::size_t kRequestIdLength = 17;

class RequestIdGenerator {
public:
    // seed: random per process (the glue takes it from the CSPRNG), so two
    // workers, or a worker and its successor after a reload, draw from
    // unrelated sequences.
    explicit RequestIdGenerator(std::uint64_t seed = 0) noexcept : state_(seed) {}

    // Unique within a process for 2^64 calls: a bijective mix of a counter.
    void next(char out[kRequestIdLength]) noexcept;

private:
    std::uint64_t state_;
};

}  // namespace apikey
