// Rank grid: Megatron "tp-dp-pp" order checked against naive loops and the four canonical plans.
#include "model/rank_grid.hpp"

#include <catch2/catch.hpp>

#include <set>

using cuboid::model::RankCoord;
using cuboid::model::RankGrid;

TEST_CASE("model::RankGrid: rank <-> coordinate round trip against naive loops", "[model]") {
  const int tp = GENERATE(1, 2, 4);
  const int dp = GENERATE(1, 2, 3);
  const int pp = GENERATE(1, 2, 4);
  const RankGrid grid(tp, dp, pp);
  int expected_rank = 0;
  // Naive oracle: TP innermost loop, then DP, then PP (Megatron order).
  for (int pp_rank = 0; pp_rank < pp; ++pp_rank) {
    for (int dp_rank = 0; dp_rank < dp; ++dp_rank) {
      for (int tp_rank = 0; tp_rank < tp; ++tp_rank) {
        const RankCoord coord{tp_rank, dp_rank, pp_rank};
        REQUIRE(grid.rank_of(coord) == expected_rank);
        REQUIRE(grid.coord_of(expected_rank) == coord);
        ++expected_rank;
      }
    }
  }
  REQUIRE(expected_rank == grid.world_size());
  // Every rank appears in exactly one group of each kind.
  for (const auto& groups : {grid.all_tp_groups(), grid.all_dp_groups(), grid.all_pp_groups()}) {
    std::multiset<int> seen;
    for (const auto& group : groups) {
      seen.insert(group.begin(), group.end());
    }
    REQUIRE(static_cast<int>(seen.size()) == grid.world_size());
    REQUIRE(static_cast<int>(std::set<int>(seen.begin(), seen.end()).size()) == grid.world_size());
  }
}

TEST_CASE("model::RankGrid: the four canonical plans", "[model]") {
  using Groups = std::vector<std::vector<int>>;
  SECTION("DP=TP=PP=1") {
    const RankGrid grid(1, 1, 1);
    REQUIRE(grid.all_tp_groups() == Groups{{0}});
    REQUIRE(grid.all_dp_groups() == Groups{{0}});
    REQUIRE(grid.all_pp_groups() == Groups{{0}});
  }
  SECTION("DP=2") {
    const RankGrid grid(1, 2, 1);
    REQUIRE(grid.all_tp_groups() == Groups{{0}, {1}});
    REQUIRE(grid.all_dp_groups() == Groups{{0, 1}});
    REQUIRE(grid.all_pp_groups() == Groups{{0}, {1}});
  }
  SECTION("DP=2,TP=2") {
    const RankGrid grid(2, 2, 1);
    REQUIRE(grid.all_tp_groups() == Groups{{0, 1}, {2, 3}});
    REQUIRE(grid.all_dp_groups() == Groups{{0, 2}, {1, 3}});
    REQUIRE(grid.all_pp_groups() == Groups{{0}, {1}, {2}, {3}});
  }
  SECTION("DP=2,TP=2,PP=2") {
    const RankGrid grid(2, 2, 2);
    REQUIRE(grid.all_tp_groups() == Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}});
    REQUIRE(grid.all_dp_groups() == Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}});
    REQUIRE(grid.all_pp_groups() == Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}});
    REQUIRE(grid.tp_group(5) == std::vector<int>{4, 5});
    REQUIRE(grid.coord_of(6) == RankCoord{0, 1, 1});
  }
}
