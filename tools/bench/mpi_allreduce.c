/* mpi_allreduce.c - the ceiling for luatrain's gradient all-reduce (tools/bench/ddp_cpu.sh):
 * a bare, blocking MPI_Allreduce (sum) of COUNT floats, in place, as an MPI program calls
 * it with nothing around it. Prints the median of 7 timed calls after 2 untimed ones, as
 * JSON, from rank 0.
 *
 *     mpicc -O2 -o mpi_allreduce mpi_allreduce.c && mpirun -np 2 ./mpi_allreduce COUNT */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, world;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    long count = argc > 1 ? atol(argv[1]) : 1L << 20;
    if (count < 1 || count > 0x7fffffffL) {
        if (rank == 0) fprintf(stderr, "mpi_allreduce: COUNT must be 1..2^31-1\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    float *buf = malloc((size_t)count * sizeof *buf);
    if (!buf) MPI_Abort(MPI_COMM_WORLD, 1);
    for (long i = 0; i < count; i++) buf[i] = (float)(i % 7) * 1e-3f;
    double t[7];
    for (int i = -2; i < 7; i++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        double dt = MPI_Wtime() - t0, worst;
        MPI_Allreduce(&dt, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (i >= 0) t[i] = worst;
    }
    qsort(t, 7, sizeof t[0], cmp);
    if (rank == 0)
        printf("{\"engine\":\"bare MPI_Allreduce\",\"ranks\":%d,\"bytes\":%ld,\"allreduce_s\":%.6g,"
               "\"allreduce_gbps\":%.6g}\n",
               world, count * 4, t[3], count * 4 / t[3] / 1e9);
    free(buf);
    MPI_Finalize();
    return 0;
}
