#!/usr/bin/env nextflow
/*
 * subtomo-embed: CryoSiam-compatible subtomogram embeddings, clustering and visualization.
 *
 *   nextflow run . -params-file configs/subtomo_embeddings.yaml -profile slurm,apptainer,gpu -resume
 *
 * The params file is CryoSiam's YAML config, unchanged (docs/config.md, docs/usage.md); every
 * param is checked against nextflow_schema.json before anything runs (nf-schema).
 */

include { validateParameters } from 'plugin/nf-schema'
include { SUBTOMO_EMBED      } from './workflows/subtomo_embed'

workflow {
    main:
    validateParameters()
    if (!params.data_folder || !params.prediction_folder || !params.trained_model) {
        error("Set data_folder, prediction_folder and trained_model (e.g. -params-file my.yaml)")
    }
    if (!params.picks && !params.instances_mask_folder) {
        error("Set instances_mask_folder (masked instances) or picks (boxes around particle picks)")
    }
    if (params.picks && !params.centers_patch_size) {
        error("Set centers_patch_size: the edge of the box cut around each pick (voxels)")
    }
    SUBTOMO_EMBED()

    // one entry per process: "PROCESS": {subtomo-embed: version}, from each process's `versions` output
    SUBTOMO_EMBED.out.versions
        .map { process, version -> "\"${process}\":\n    subtomo-embed: ${version.trim().replaceFirst('subtomo-embed ', '')}" }
        .unique()
        .collectFile(name: 'software_versions.yml', storeDir: "${params.prediction_folder}/pipeline_info",
                     sort: true, newLine: true)

    // what the handler reports, captured here: inside it `workflow` and `params` are null (a real run
    // of Nextflow 24.10 failed there)
    def metadata = workflow
    def results = params.prediction_folder
    workflow.onComplete {
        log.info(metadata.success
            ? "subtomo-embed: done; results in ${results}"
            : "subtomo-embed: failed; see ${results}/pipeline_info and .nextflow.log")
    }
}
